"""An SB3 ``VecEnv`` over one ``RemoteVectorEnv``: each batched step is one
frame per simulator, whatever ``n_envs`` is.

The simulators autoreset in Gymnasium's SAME_STEP mode, which is SB3's own
convention (the returned obs of a done env is the first obs of the next
episode; the last one is in ``info["terminal_observation"]``). The local
``Monitor`` wrappers SB3 puts around each env keep running here, fed with
each env's share of the batched results, so ``ep_info_buffer``, monitor
files and ``env_is_wrapped(Monitor)`` behave as with ``DummyVecEnv``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import EnvSpec
from stable_baselines3.common.env_util import is_wrapped
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from ..protocol.errors import UnsupportedError
from ..trainer.batching import unbatch_infos
from ..trainer.remote_vector_env import RemoteVectorEnv


class Slot(gym.Env):
    """The innermost env of a local wrapper stack: returns whatever result
    the vector env put in it for this env index."""

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        *,
        metadata: dict[str, Any],
        render_mode: str | None,
        spec: EnvSpec | None,
    ) -> None:
        self.observation_space = observation_space
        self.action_space = action_space
        self.metadata = metadata
        self.render_mode = render_mode
        self.spec = spec
        self.result: tuple[Any, ...] = ()

    def step(self, action: Any) -> tuple[Any, ...]:
        return self.result

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, ...]:
        return self.result


class RemoteVecEnv(VecEnv):
    def __init__(
        self, venv: RemoteVectorEnv, stacks: list[gym.Env], slots: list[Slot], action_space: gym.Space
    ) -> None:
        self.venv = venv
        self.stacks = stacks  # per env: a Monitor around its slot, or the slot itself
        self.slots = slots
        super().__init__(venv.num_envs, venv.single_observation_space, action_space)
        self._actions: Any = None

    # -- stepping -----------------------------------------------------------

    def reset(self) -> VecEnvObs:
        seeds = None if all(s is None for s in self._seeds) else list(self._seeds)
        options = self._options[0] or None
        if any(o != self._options[0] for o in self._options):
            raise UnsupportedError("a remote VecEnv resets all envs with the same options; got different ones per env")
        obs, infos = self.venv.reset(seed=seeds, options=options)
        for i, info in enumerate(unbatch_infos(infos, self.num_envs)):
            self.slots[i].result = (None, info)
            _, self.reset_infos[i] = self.stacks[i].reset()
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, terminated, truncated, infos = self.venv.step(self._actions)
        dones = np.logical_or(terminated, truncated)
        per_env = unbatch_infos(infos, self.num_envs)
        final_infos = unbatch_infos(infos["final_info"], self.num_envs) if "final_info" in infos else None
        out: list[dict[str, Any]] = []
        for i in range(self.num_envs):
            info = per_env[i]
            done = bool(dones[i])
            if done:
                terminal_obs = info.pop("final_obs")
                info.pop("final_info", None)
                step_info = final_infos[i] if final_infos is not None else {}
                reset_info = info
            else:
                terminal_obs, step_info, reset_info = None, info, None
            slot = self.slots[i]
            slot.result = (terminal_obs, float(rewards[i]), bool(terminated[i]), bool(truncated[i]), step_info)
            _, _, term, trunc, step_info = self.stacks[i].step(None)
            step_info["TimeLimit.truncated"] = bool(trunc and not term)
            if done:
                step_info["terminal_observation"] = terminal_obs
                slot.result = (None, reset_info)
                _, self.reset_infos[i] = self.stacks[i].reset()
            out.append(step_info)
        return obs, rewards.astype(np.float32), dones, out

    def close(self) -> None:
        self.venv.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        frames = self.venv.render()
        return list(frames) if frames is not None else [None] * self.num_envs

    # -- attributes: answered by the local wrappers and what the simulator described

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [self._attr(self.stacks[i], attr_name) for i in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        for i in self._get_indices(indices):
            setattr(self.stacks[i], attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        return [
            self._attr(self.stacks[i], method_name)(*method_args, **method_kwargs) for i in self._get_indices(indices)
        ]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [is_wrapped(self.stacks[i], wrapper_class) for i in self._get_indices(indices)]

    @staticmethod
    def _attr(env: gym.Env, name: str) -> Any:
        try:
            return env.get_wrapper_attr(name)
        except AttributeError:
            raise AttributeError(
                f"{name!r} is not known on the trainer side of a remote env: only its spaces, metadata, "
                "spec, render_mode and the local Monitor's attributes are"
            ) from None

    def __repr__(self) -> str:
        return f"<RemoteVecEnv {self.venv!r}>"

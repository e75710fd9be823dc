"""An SB3 ``VecEnv`` over one ``RemoteVectorEnv``: each batched step is one
frame per simulator, whatever ``n_envs`` is.

The simulators autoreset in Gymnasium's SAME_STEP mode, which is SB3's own
convention (the returned obs of a done env is the first obs of the next
episode; the last one is in ``info["terminal_observation"]``), and each env's
info arrives as that env produced it (not through Gymnasium's batched
arrays, which retype values and fill other envs' missing keys). The local
``Monitor`` wrappers SB3 puts around each env keep running here, fed with
each env's share of the batched results, so ``ep_info_buffer``, monitor
files and ``env_is_wrapped(Monitor)`` behave as with ``DummyVecEnv``;
``env_method``, ``get_attr`` and ``set_attr`` reach the simulators' envs for
anything the local wrappers do not define.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec
from gymnasium.vector.utils import concatenate, create_empty_array
from stable_baselines3.common.env_util import is_wrapped
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from ..trainer.answers import malformed
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

    DESCRIBED = frozenset({"observation_space", "action_space", "metadata", "render_mode", "spec"})

    def step(self, action: Any) -> tuple[Any, ...]:
        return self.result

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, ...]:
        return self.result


class RemoteVecEnv(VecEnv):
    def __init__(
        self, venv: RemoteVectorEnv, stacks: list[gym.Env], slots: list[Slot], action_space: gym.Space
    ) -> None:
        """``venv`` must answer infos per env (``per_env_infos=True``) in SAME_STEP mode."""
        self.venv = venv
        self.stacks = stacks  # per env: a Monitor around its slot, or the slot itself
        self.slots = slots
        super().__init__(venv.num_envs, venv.single_observation_space, action_space)
        self._actions: Any = None

    # -- stepping -----------------------------------------------------------

    def reset(self) -> VecEnvObs:
        """Every env reset with its own seed and options, as ``DummyVecEnv`` does:
        envs that share options are reset together (a partial reset per group)."""
        seeds = None if all(s is None for s in self._seeds) else list(self._seeds)
        groups: list[tuple[dict[str, Any], list[int]]] = []
        for i, options in enumerate(self._options):
            group = next((g for g in groups if g[0] == (options or {})), None)
            if group is None:
                groups.append((options or {}, [i]))
            else:
                group[1].append(i)
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        obs: Any = None
        for options, indices in groups:
            if len(groups) == 1:
                obs, got = self.venv.reset(seed=seeds, options=options or None)
            else:
                mask = np.zeros(self.num_envs, dtype=bool)
                mask[indices] = True
                obs, got = self.venv.reset(seed=seeds, options={**options, "reset_mask": mask})
            for i in indices:
                infos[i] = got[i]
        for i, info in enumerate(infos):
            self.slots[i].result = (None, info)
            _, self.reset_infos[i] = self.stacks[i].reset()
        self._reset_seeds()
        self._reset_options()
        return self._sb3_obs(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, terminated, truncated, infos = self.venv.step(self._batched_actions(self._actions))
        dones = np.logical_or(terminated, truncated)
        out: list[dict[str, Any]] = []
        for i in range(self.num_envs):
            info = dict(infos[i])
            done = bool(dones[i])
            if done:  # SAME_STEP: the step's info and last obs, then the new episode's reset info
                if "final_obs" not in info or not isinstance(info.get("final_info"), dict):
                    raise malformed(f"env {i} ended its episode without final_obs and final_info")
                terminal_obs = info.pop("final_obs")
                step_info = info.pop("final_info")
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
        return self._sb3_obs(obs), rewards.astype(np.float32), dones, out

    def _batched_actions(self, actions: Any) -> Any:
        """SB3 hands Dict and Tuple actions over as one per env (``DummyVecEnv``
        indexes them by env); Gymnasium's vector envs take them batched."""
        space = self.venv.single_action_space
        if not isinstance(space, (spaces.Dict, spaces.Tuple)):
            return actions
        items = [actions[i] for i in range(self.num_envs)]
        return concatenate(space, items, create_empty_array(space, self.num_envs))

    def _sb3_obs(self, obs: Any) -> Any:
        """Batched observations in SB3's types (an ``OrderedDict`` for Dict spaces)."""
        if isinstance(self.observation_space, spaces.Dict):
            return OrderedDict((key, obs[key]) for key in self.observation_space.spaces)
        return obs

    def close(self) -> None:
        self.venv.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        frames = self.venv.render()
        return list(frames) if frames is not None else [None] * self.num_envs

    # -- methods and attributes: the local wrappers' own (Monitor), else the simulator's envs

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        targets = list(self._get_indices(indices))
        if self._local_owner(attr_name) is not None:
            return [self.stacks[i].get_wrapper_attr(attr_name) for i in targets]
        return self.venv.get_each(targets, attr_name)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        targets = list(self._get_indices(indices))
        if self._local_owner(attr_name) is not None:
            for i in targets:
                setattr(self.stacks[i], attr_name, value)
            return
        self.venv.set_each(targets, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        targets = list(self._get_indices(indices))
        if self._local_owner(method_name) is not None:
            return [self.stacks[i].get_wrapper_attr(method_name)(*method_args, **method_kwargs) for i in targets]
        return self.venv.call_each(targets, method_name, method_args, method_kwargs)

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [is_wrapped(self.stacks[i], wrapper_class) for i in self._get_indices(indices)]

    def _local_owner(self, name: str) -> gym.Env | None:
        """The trainer-side object that answers ``name``: a local wrapper (Monitor)
        that defines it, or the slot for what the simulator described (spaces,
        metadata, spec, render_mode); None means the simulator's env answers."""
        if name in Slot.DESCRIBED:
            return self.slots[0]
        env = self.stacks[0]
        while isinstance(env, gym.Wrapper):
            if name in vars(env) or any(name in vars(cls) for cls in type(env).__mro__[:-1]
                                        if cls not in (gym.Wrapper, gym.Env)):
                return env
            env = env.env
        return None

    def __repr__(self) -> str:
        return f"<RemoteVecEnv {self.venv!r}>"

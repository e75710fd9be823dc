"""``RemoteMultiAgentEnvRunner``: RLlib's ``MultiAgentEnvRunner`` whose envs are
hosted by remote simulators.

As for the single-agent runner, only what RLlib's ``make_env`` gets from its
``make_vec`` differs: a ``RemoteVectorMultiAgentEnv`` of
``num_envs_per_env_runner`` envs over the workspace's simulators, built from
the env's creator by name. It keeps ``SyncVectorMultiAgentEnv``'s contract
value for value (next-step autoreset, per-env lists of agent maps, object
arrays of rewards and flags), and its ``envs`` are ``MultiAgentEnv`` views
with the spaces and live agents RLlib reads; a view also resets and steps its
one env, as RLlib's env checker does. A vector step is one frame per
simulator, an autoreset travelling in the same frame as the other envs' steps.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from ray.rllib.env import multi_agent_env_runner
from ray.rllib.env.env_errors import StepFailedRecreateEnvError
from ray.rllib.env.multi_agent_env import MultiAgentEnv
from ray.rllib.env.multi_agent_env_runner import MultiAgentEnvRunner
from ray.rllib.env.vector.vector_multi_agent_env import VectorMultiAgentEnv
from ray.rllib.utils.typing import ResultDict

from ..trainer.patching import Patcher
from ..trainer.remote_agents import ALL, AgentEnvs
from ..trainer.shards import SKIP
from .env_runner import LOST, creator_call, remote_session, report_metrics

_AUTORESET = {"reset": {"seed": None, "options": None}}  # what a local vector env does to an ended env


class RemoteAgentEnv(MultiAgentEnv):
    """One env of a ``RemoteVectorMultiAgentEnv``, as RLlib reads ``envs[i].unwrapped``."""

    def __init__(self, vector: RemoteVectorMultiAgentEnv, index: int) -> None:
        remote = vector.remote
        self._vector, self._index = vector, index
        self.possible_agents = list(remote.spaces.possible_agents)
        self.observation_spaces = remote.spaces.observation_spaces
        self.action_spaces = remote.spaces.action_spaces
        self.metadata = remote.metadata
        self.render_mode = remote.render_mode
        super().__init__()

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        seeds = [SKIP] * self._vector.num_envs
        seeds[self._index] = seed
        return self._vector.remote.reset(seeds, options)[self._index]

    def step(self, action_dict: dict) -> tuple[dict, dict, dict, dict, dict]:
        entries: list[Any] = [None] * self._vector.num_envs
        entries[self._index] = {"step": action_dict}
        return self._vector.call_step(entries)[self._index]

    def render(self) -> Any:
        return self._vector.render()[self._index]

    def get_wrapper_attr(self, name: str) -> Any:
        """A name of this object, else of the env on the simulator (public names only)."""
        if name.startswith("_") or hasattr(self, name):
            return getattr(self, name)
        return self._vector.remote.attribute(self._index, {"do": "get", "name": name})

    @property
    def agents(self) -> list[Any]:
        return self._vector.remote.agents[self._index]

    @agents.setter
    def agents(self, value: list[Any]) -> None:  # MultiAgentEnv.__init__ assigns it; the vector holds it
        pass


class RemoteVectorMultiAgentEnv(VectorMultiAgentEnv):
    """``num_envs`` multi-agent envs on the simulators, as RLlib's ``SyncVectorMultiAgentEnv``."""

    def __init__(self, remote: AgentEnvs, name: str) -> None:
        super().__init__()
        self.remote = remote
        self.name = name
        self.num_envs = remote.num_envs
        self.envs = [RemoteAgentEnv(self, i) for i in range(self.num_envs)]
        self.metadata = dict(remote.metadata)
        self.metadata["autoreset_mode"] = "next_step"
        self.render_mode = remote.render_mode
        self.single_observation_spaces = remote.spaces.observation_spaces
        self.single_action_spaces = remote.spaces.action_spaces
        self.single_observation_space = gym.spaces.Dict(self.single_observation_spaces)
        self.single_action_space = gym.spaces.Dict(self.single_action_spaces)
        self._autoreset_envs = np.zeros((self.num_envs,), dtype=np.bool_)

    def reset(self, *, seed: Any = None, options: dict | None = None) -> tuple[list, list]:
        super().reset(seed=seed if isinstance(seed, int) else None, options=options)
        if seed is None:
            seeds: list[Any] = [None] * self.num_envs
        elif isinstance(seed, int):
            seeds = [seed + i for i in range(self.num_envs)]
        else:
            if len(seed) != self.num_envs:
                raise AssertionError(
                    f"If seeds are passed as a list the length must match num_envs={self.num_envs} "
                    f"but got length={len(seed)}."
                )
            seeds = list(seed)
        self._autoreset_envs = np.zeros((self.num_envs,), dtype=np.bool_)
        results = self.remote.reset(seeds, options)
        return [obs for obs, _ in results], [infos for _, infos in results]

    def call_step(self, entries: list[Any]) -> list[Any]:
        """One frame per simulator; a lost simulator asks RLlib to recreate the env."""
        try:
            return self.remote.step(entries, all_key=True)
        except LOST as exc:
            raise StepFailedRecreateEnvError(str(exc)) from exc

    def step(self, actions: list[dict]) -> tuple[list, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        entries = [_AUTORESET if self._autoreset_envs[i] else {"step": a} for i, a in enumerate(actions)]
        observations, rewards, terminations, truncations, infos = [], [], [], [], []
        for entry, result in zip(entries, self.call_step(entries)):
            if entry is _AUTORESET:
                obs, info = result
                agents = self.remote.spaces.possible_agents
                result = (
                    obs, {aid: 0.0 for aid in agents}, {**{aid: False for aid in agents}, ALL: False},
                    {**{aid: False for aid in agents}, ALL: False}, info,
                )  # fmt: skip
            for out, value in zip((observations, rewards, terminations, truncations, infos), result):
                out.append(value)
        self._autoreset_envs = np.logical_or(
            np.array([t[ALL] for t in terminations]), np.array([t.get(ALL, False) for t in truncations])
        )
        # RLlib deep-copies its envs' observations; these were just decoded and are nobody else's.
        return observations, np.copy(rewards), np.copy(terminations), np.copy(truncations), np.copy(infos)

    def render(self) -> tuple[Any, ...]:
        return tuple(self.remote.render(lambda: self.reset()))

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        return tuple(
            self.remote.attribute(i, {"do": "call", "name": name, "args": list(args), "kwargs": kwargs})
            for i in range(self.num_envs)
        )

    def get_attr(self, name: str) -> tuple[Any, ...]:
        return self.call(name)  # as RLlib's: a method is called, an attribute read

    def close_extras(self, **kwargs: Any) -> None:
        self.remote.close()

    def __repr__(self) -> str:
        return f"RemoteVectorMultiAgentEnv({self.name}, num_envs={self.num_envs})"


class RemoteMultiAgentEnvRunner(MultiAgentEnvRunner):
    """RLlib's own ``make_env`` runs unchanged (the env context, the env checker, the
    ``on_environment_created`` callback); only its ``make_vec`` builds remote envs."""

    def make_env(self) -> None:
        self._session = session = remote_session(self)
        patcher = Patcher()
        patcher.set(multi_agent_env_runner, "make_vec", lambda *a, **kw: self._make_vec(session, *a, **kw))
        try:
            super().make_env()
        finally:
            patcher.restore()

    def _make_vec(self, session: Any, env_id: str, num_envs: int = 1, **_: Any) -> RemoteVectorMultiAgentEnv:
        """What RLlib's ``make_env`` asks for, hosted by the simulators (its vectorization
        mode is RLlib's "sync": the simulators step each shard's envs in turn)."""
        call, name = creator_call(self)
        remote = AgentEnvs(session, name, num_envs, {"creator": call})
        return RemoteVectorMultiAgentEnv(remote, name)

    def get_metrics(self) -> ResultDict:
        report_metrics(self)
        return super().get_metrics()

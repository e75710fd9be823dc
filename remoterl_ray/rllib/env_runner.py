"""``RemoteEnvRunner``: RLlib's ``SingleAgentEnvRunner`` whose vector env is
hosted by remote simulators.

Only what ``gym.make_vec`` returns differs: while RLlib's own ``make_env``
runs, it builds a ``RemoteVectorEnv`` of ``num_envs_per_env_runner`` envs
over the workspace's simulators (one frame per simulator per step). Everything else (episodes,
connectors, the RLModule, metrics, checkpoints) is RLlib's own. A simulator
lost mid-step surfaces as ``StepFailedRecreateEnvError``, so with
``restart_failed_sub_environments=True`` RLlib recreates the env on the
simulators still online and carries on; and so does a
``StepFailedRecreateEnvError`` the env itself raises on the simulator (it is
registered with :func:`register_remote_exception`, so it arrives as that class).
"""

from __future__ import annotations

import logging
from typing import Any

import gymnasium as gym
from ray.rllib.env.env_errors import StepFailedRecreateEnvError
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.utils.typing import ResultDict
from ray.tune.registry import ENV_CREATOR, _global_registry

from ..protocol.errors import (
    RelayUnavailableError,
    RemoteTimeoutError,
    SimulatorLostError,
    register_remote_exception,
)
from ..trainer.gym_patch import GYM_MODULES
from ..trainer.patching import Patcher
from ..trainer.remote_vector_env import RemoteVectorEnv
from .creators import creator_target
from .settings import SETTINGS_KEY, env_config_for_envs, session_for, settings_in

log = logging.getLogger("remoterl.rllib")

METRICS_KEY = "remoterl"
LOST = (SimulatorLostError, RelayUnavailableError, RemoteTimeoutError)
RLLIB_ENV_NAME = "rllib-single-agent-env-v0"  # the id RLlib's make_env registers a creator under


def _name(creator: Any) -> str:
    return getattr(creator, "__name__", repr(creator))

# An env that asks RLlib to recreate it by raising this on the simulator is recreated silently, as locally.
register_remote_exception(StepFailedRecreateEnvError)


class LossMeansRecreate(gym.vector.VectorWrapper):
    """A step that failed because the remote side went away asks RLlib to
    recreate the env (RLlib's ``StepFailedRecreateEnvError``)."""

    def step(self, actions: Any) -> Any:
        try:
            return self.env.step(actions)
        except LOST as exc:
            raise StepFailedRecreateEnvError(str(exc)) from exc


class RemoteEnvRunner(SingleAgentEnvRunner):
    """RLlib's own ``make_env`` runs unchanged (closing the old env, the env
    context, ``DictInfoToList``, the ``on_environment_created`` callback); only
    the ``gym.make_vec`` it calls builds a ``RemoteVectorEnv`` instead."""

    def make_env(self) -> None:
        settings = settings_in(self.config.env_config)
        if SETTINGS_KEY in (self.config.env_config or {}):
            # The relay settings stay with this runner; envs and callbacks see the env_config they would locally.
            config = self.config.copy(copy_frozen=False)
            config.env_config = env_config_for_envs(config.env_config)  # environment() would merge, not replace
            config.freeze()
            self.config, self._settings = config, settings
        self._session = session = session_for(getattr(self, "_settings", settings))
        patcher = Patcher()
        local_make_vec = gym.make_vec
        patcher.replace(GYM_MODULES, "make_vec", local_make_vec, lambda *a, **kw: self._make_vec(session, *a, **kw))
        try:
            super().make_env()
        finally:
            patcher.restore()

    def _make_vec(
        self, session: Any, env_name: str, num_envs: int, vectorization_mode: Any = None, **env_config: Any
    ) -> gym.vector.VectorEnv:
        """What RLlib's ``make_env`` asks ``gym.make_vec`` for, hosted by the simulators."""
        mode = gym.VectorizeMode(vectorization_mode or self.config.gym_env_vectorize_mode).value
        env = self.config.env
        if env_name != RLLIB_ENV_NAME:  # an id: made by the simulators' Gymnasium
            return LossMeansRecreate(RemoteVectorEnv(session, env_name, num_envs, vectorization_mode=mode, **env_config))
        # RLlib registered its creator under RLLIB_ENV_NAME as a lambda: send the creator by name instead.
        creator, name = (_global_registry.get(ENV_CREATOR, env), env) if isinstance(env, str) else (env, _name(env))
        call = {
            "target": creator_target(creator, name),
            "env_config": dict(self.config.env_config or {}),
            "worker_index": self.worker_index or 0,
            "num_workers": self.num_workers or 0,
            "vectorization_mode": mode,  # as locally: "vector_entry_point" calls the creator once for a vector env
        }
        return LossMeansRecreate(RemoteVectorEnv(session, name, num_envs, creator=call))

    def get_metrics(self) -> ResultDict:
        if self.env is not None:  # make_env ran, so this env runner has its session
            for key, value in self._session.metrics_snapshot().items():
                self.metrics.log_value((METRICS_KEY, key), value, reduce="mean", window=1)
        return super().get_metrics()

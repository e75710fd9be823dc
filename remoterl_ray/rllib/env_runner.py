"""``RemoteEnvRunner``: RLlib's ``SingleAgentEnvRunner`` whose vector env is
hosted by remote simulators.

Only ``make_env`` differs: instead of ``gym.make_vec`` it builds a
``RemoteVectorEnv`` of ``num_envs_per_env_runner`` envs over the workspace's
simulators (one frame per simulator per step). Everything else (episodes,
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
from gymnasium.wrappers.vector import DictInfoToList
from ray.rllib.callbacks.utils import make_callback
from ray.rllib.env.env_context import EnvContext
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
from ..trainer.remote_vector_env import RemoteVectorEnv
from .creators import creator_target
from .settings import env_config_for_envs, session_for, settings_in

log = logging.getLogger("remoterl.rllib")

METRICS_KEY = "remoterl"
_LOST = (SimulatorLostError, RelayUnavailableError, RemoteTimeoutError)

# An env that asks RLlib to recreate it by raising this on the simulator is recreated silently, as locally.
register_remote_exception(StepFailedRecreateEnvError)


class LossMeansRecreate(gym.vector.VectorWrapper):
    """A step that failed because the remote side went away asks RLlib to
    recreate the env (RLlib's ``StepFailedRecreateEnvError``)."""

    def step(self, actions: Any) -> Any:
        try:
            return self.env.step(actions)
        except _LOST as exc:
            raise StepFailedRecreateEnvError(str(exc)) from exc


class RemoteEnvRunner(SingleAgentEnvRunner):
    def make_env(self) -> None:
        if self.env is not None:
            try:
                self.env.close()
            except Exception as exc:  # the old env's simulator may be gone already
                log.debug("closing the previous remote env: %s", exc)
            self.env = None
        if not self.config.env:
            raise ValueError("`config.env` is not set: give RLlib an env id, e.g. `config.environment('CartPole-v1')`")
        self._session = session = session_for(settings_in(self.config.env_config))
        env_config = env_config_for_envs(self.config.env_config)
        env_ctx = EnvContext(env_config, worker_index=self.worker_index, num_workers=self.num_workers)
        venv = self._remote_vector_env(session, env_config)
        self.env = DictInfoToList(LossMeansRecreate(venv))
        self.num_envs = self.env.num_envs
        self._needs_initial_reset = True
        make_callback(
            "on_environment_created",
            callbacks_objects=self._callbacks,
            callbacks_functions=self.config.callbacks_on_environment_created,
            kwargs=dict(env_runner=self, metrics_logger=self.metrics, env=self.env.unwrapped, env_context=env_ctx),
        )

    def _remote_vector_env(self, session: Any, env_config: dict[str, Any]) -> RemoteVectorEnv:
        env = self.config.env
        num_envs = self.config.num_envs_per_env_runner
        if isinstance(env, str) and _global_registry.contains(ENV_CREATOR, env):
            creator, name = _global_registry.get(ENV_CREATOR, env), env
        elif callable(env):
            creator, name = env, getattr(env, "__name__", repr(env))
        else:
            mode = gym.VectorizeMode(self.config.gym_env_vectorize_mode).value
            return RemoteVectorEnv(session, env, num_envs, vectorization_mode=mode, **env_config)
        call = {
            "target": creator_target(creator, name),
            "env_config": env_config,
            "worker_index": self.worker_index or 0,
            "num_workers": self.num_workers or 0,
            # as locally: "vector_entry_point" calls the creator once for a vector env
            "vectorization_mode": gym.VectorizeMode(self.config.gym_env_vectorize_mode).value,
        }
        return RemoteVectorEnv(session, name, num_envs, creator=call)

    def get_metrics(self) -> ResultDict:
        if self.env is not None:  # make_env ran, so this env runner has its session
            for key, value in self._session.metrics_snapshot().items():
                self.metrics.log_value((METRICS_KEY, key), value, reduce="mean", window=1)
        return super().get_metrics()

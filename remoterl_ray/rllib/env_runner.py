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
from .settings import CREATOR_KEY, RESERVED_KEYS, env_config_for_envs, session_for, settings_in

log = logging.getLogger("remoterl.rllib")

METRICS_KEY = "remoterl"
LOST = (SimulatorLostError, RelayUnavailableError, RemoteTimeoutError)
RLLIB_ENV_NAME = "rllib-single-agent-env-v0"  # the id RLlib's make_env registers a creator under


def _name(creator: Any) -> str:
    return getattr(creator, "__name__", repr(creator))

# An env that asks RLlib to recreate it by raising this on the simulator is recreated silently, as locally.
register_remote_exception(StepFailedRecreateEnvError)


def remote_session(runner: Any) -> Any:
    """The trainer session of an env runner, from the settings its config carries. The
    settings stay with the runner; envs and callbacks see the env_config they would locally."""
    settings = settings_in(runner.config.env_config)
    env_config = runner.config.env_config or {}
    if RESERVED_KEYS.intersection(env_config):
        runner._creator_target = env_config.get(CREATOR_KEY)
        config = runner.config.copy(copy_frozen=False)
        config.env_config = env_config_for_envs(config.env_config)  # environment() would merge, not replace
        config.freeze()
        runner.config, runner._settings = config, settings
    return session_for(getattr(runner, "_settings", settings))


def creator_call(runner: Any) -> tuple[dict[str, Any], str]:
    """How the simulators build the runner's env: its creator by "module:function"
    name (RLlib registers a lambda, and code never travels), with the env context."""
    env = runner.config.env
    creator, name = (_global_registry.get(ENV_CREATOR, env), env) if isinstance(env, str) else (env, _name(env))
    target = getattr(runner, "_creator_target", None)
    call = {
        "target": creator_target(creator, name) if target is None or isinstance(env, str) else target,
        "env_config": dict(runner.config.env_config or {}),
        "worker_index": runner.worker_index or 0,
        "num_workers": runner.num_workers or 0,
    }
    return call, name


def report_metrics(runner: Any) -> None:
    """The session's remote-env figures, in the runner's metrics under ``remoterl``."""
    if runner.env is not None:  # make_env ran, so this env runner has its session
        for key, value in runner._session.metrics_snapshot().items():
            runner.metrics.log_value((METRICS_KEY, key), value, reduce="mean", window=1)


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
        self._session = session = remote_session(self)
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
        if env_name != RLLIB_ENV_NAME:  # an id: made by the simulators' Gymnasium
            return LossMeansRecreate(RemoteVectorEnv(session, env_name, num_envs, vectorization_mode=mode, **env_config))
        # RLlib registered its creator under RLLIB_ENV_NAME as a lambda: send the creator by name instead.
        call, name = creator_call(self)
        call["vectorization_mode"] = mode  # as locally: "vector_entry_point" calls the creator once for a vector env
        return LossMeansRecreate(RemoteVectorEnv(session, name, num_envs, creator=call))

    def get_metrics(self) -> ResultDict:
        report_metrics(self)
        return super().get_metrics()

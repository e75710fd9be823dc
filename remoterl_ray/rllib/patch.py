"""While a trainer is initialized, unchanged RLlib and Tune code uses remote
simulators: every ``Algorithm`` built in this process gets
``RemoteEnvRunner`` with this session's settings in its config (which is how
the settings reach env runners in other processes)."""

from __future__ import annotations

import logging
from typing import Any

from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

from ..trainer.configure import current_session
from ..trainer.patching import Patcher
from ..trainer.settings import TrainerSettings
from .env_runner import RemoteEnvRunner
from ..trainer.targets import importable_name
from .settings import CREATOR_KEY, SETTINGS_KEY

log = logging.getLogger("remoterl.rllib")


def use_remote_env_runners(config: AlgorithmConfig, settings: TrainerSettings | None = None) -> AlgorithmConfig:
    """A copy of ``config`` whose env runners are ``RemoteEnvRunner``s (multi-agent
    configs: ``RemoteMultiAgentEnvRunner``s) reaching the relay with ``settings``
    (default: the active session's, else ``REMOTERL_*`` env vars in each env
    runner's process).

    Configs that name another env runner class or use the old API stack are
    returned unchanged (with a warning): those run locally.
    """
    # Here, not at import: this module loads while RLlib's algorithm module is still importing.
    from ray.rllib.env.multi_agent_env_runner import MultiAgentEnvRunner

    from .multi_agent import RemoteMultiAgentEnvRunner

    cls = config.env_runner_cls
    if config.is_multi_agent:
        local, remote = MultiAgentEnvRunner, RemoteMultiAgentEnvRunner
    else:
        local, remote = SingleAgentEnvRunner, RemoteEnvRunner
    if cls is not None and cls is not local and not issubclass(cls, (RemoteEnvRunner, RemoteMultiAgentEnvRunner)):
        log.warning("remoterl: config uses its own env runner %s; its envs stay local", cls.__name__)
        return config
    if not config.enable_env_runner_and_connector_v2:
        log.warning("remoterl: only configs on RLlib's new API stack run remotely; this one stays local")
        return config
    if settings is None:
        session = current_session()
        settings = session.settings if session is not None else None
    config = config.copy(copy_frozen=False)
    env_config = dict(config.env_config or {})
    if settings is not None:
        env_config[SETTINGS_KEY] = settings
    if config.env is not None and not isinstance(config.env, str):
        target = importable_name(config.env)
        if target is not None:
            env_config[CREATOR_KEY] = target
    config.environment(env_config=env_config)
    config.env_runners(env_runner_cls=remote if cls is None or cls is local else cls)
    return config


_ORIGINAL_ALGORITHM_INIT = Algorithm.__init__


def _algorithm_init(self: Algorithm, config: Any = None, *args: Any, **kwargs: Any) -> None:
    """``Algorithm.__init__`` while a trainer is initialized. Module-level, so
    Tune can pickle algorithm classes by reference; in processes without a
    session (env runners, Tune trials) it is the original."""
    session = current_session()
    if session is not None and isinstance(config, AlgorithmConfig):
        config = use_remote_env_runners(config, session.settings)
    _ORIGINAL_ALGORITHM_INIT(self, config, *args, **kwargs)


def patch_rllib(patcher: Patcher) -> None:
    patcher.set(Algorithm, "__init__", _algorithm_init)

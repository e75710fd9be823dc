"""How a RemoteEnvRunner, a Ray actor in another process, learns where the
relay is and how to trust it: the trainer's settings (relay URL, key, CA file)
ride in the algorithm config's env_config under one reserved key (stripped
before the env_config reaches any env)."""

from __future__ import annotations

import atexit
import threading
from typing import Any

from ..protocol.errors import NoSimulatorError, RelayUnavailableError
from ..trainer.configure import current_session, trainer_settings
from ..trainer.session import TrainerSession
from ..trainer.settings import TrainerSettings

SETTINGS_KEY = "_remoterl"
# The env's creator as "module:attr", named where the config was made: a class that a factory
# made (RLlib's MultiAgentCartPole) reaches env runners pickled by value, no longer findable by name.
CREATOR_KEY = "_remoterl_creator"
RESERVED_KEYS = frozenset({SETTINGS_KEY, CREATOR_KEY})

_sessions: dict[TrainerSettings, TrainerSession] = {}
_lock = threading.Lock()


def settings_in(env_config: Any) -> TrainerSettings:
    """The settings a config carries, else ``REMOTERL_*`` env vars of this process."""
    settings = (env_config or {}).get(SETTINGS_KEY)
    if isinstance(settings, TrainerSettings):
        return settings
    return trainer_settings()


def env_config_for_envs(env_config: Any) -> dict[str, Any]:
    return {k: v for k, v in dict(env_config or {}).items() if k not in RESERVED_KEYS}


def session_for(settings: TrainerSettings) -> TrainerSession:
    """One connection per process and settings, shared by its env runners."""
    active = current_session()
    if active is not None and active.settings == settings:
        return active
    with _lock:
        session = _sessions.get(settings)
        if session is None:
            session = TrainerSession(settings)
            if session.links.connect() is None:
                raise RelayUnavailableError(f"cannot reach the relay at {settings.relay_url}")
            if session.links.wait_for_simulators(settings.num_workers, settings.simulator_wait) == 0:
                session.close()
                raise NoSimulatorError(
                    f"no simulator of this workspace came online within {settings.simulator_wait:.0f}s"
                )
            _sessions[settings] = session
        return session


@atexit.register
def _close_sessions() -> None:
    with _lock:
        for session in _sessions.values():
            session.close()
        _sessions.clear()

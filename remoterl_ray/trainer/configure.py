"""Trainer settings from arguments, then ``REMOTERL_*`` environment variables,
then defaults; and the session ``remoterl.init`` made current.

Integrations (layer 6: RLlib env runners, SB3) read both; the public API
(layer 7) sets the current session. Keeping them here lets neither import
the other.
"""

from __future__ import annotations

from ..config import (
    ENV_CONNECT_TIMEOUT,
    ENV_MAX_MESSAGE,
    ENV_MAX_SPACE_BYTES,
    ENV_SIMULATOR_WAIT,
    ENV_TIMEOUT,
    resolve_api_key,
    resolve_ca_file,
    resolve_compression,
    resolve_count,
    resolve_relay_url,
    resolve_resume_window,
    resolve_seconds,
    resolve_tensorboard_dir,
)
from ..protocol.limits import MAX_MESSAGE, MAX_SPACE_BYTES, MIN_MESSAGE
from .session import TrainerSession
from .settings import TrainerSettings

_current: TrainerSession | None = None


def current_session() -> TrainerSession | None:
    """The trainer session ``remoterl.init`` made; None when not initialized."""
    return _current


def set_current_session(session: TrainerSession | None) -> None:
    global _current
    _current = session


def trainer_settings(
    api_key: str | None = None,
    relay_url: str | None = None,
    *,
    num_workers: int = 1,
    num_env_runners: int = 2,
    timeout: float | None = None,
    connect_timeout: float | None = None,
    simulator_wait: float | None = None,
    tensorboard_dir: str | None = None,
    ca_file: str | None = None,
    max_space_bytes: int | None = None,
    resume_window: float | None = None,
    compression: str | None = None,
    max_message: int | None = None,
) -> TrainerSettings:
    """Trainer settings from the arguments given, then ``REMOTERL_*`` env vars, then defaults."""
    max_message = resolve_count(max_message, ENV_MAX_MESSAGE, MAX_MESSAGE)
    if max_message < MIN_MESSAGE:
        raise ValueError(f"max_message must be at least {MIN_MESSAGE} bytes, got {max_message}")
    return TrainerSettings(
        relay_url=resolve_relay_url(relay_url),
        api_key=resolve_api_key(api_key),
        num_workers=num_workers,
        num_env_runners=num_env_runners,
        timeout=resolve_seconds(timeout, ENV_TIMEOUT, 60.0),
        connect_timeout=resolve_seconds(connect_timeout, ENV_CONNECT_TIMEOUT, 10.0),
        simulator_wait=resolve_seconds(simulator_wait, ENV_SIMULATOR_WAIT, 10.0),
        tensorboard_dir=resolve_tensorboard_dir(tensorboard_dir),
        ca_file=resolve_ca_file(ca_file),
        max_space_bytes=resolve_count(max_space_bytes, ENV_MAX_SPACE_BYTES, MAX_SPACE_BYTES),
        resume_window=resolve_resume_window(resume_window),
        compression=resolve_compression(compression),
        max_message=max_message,
    )

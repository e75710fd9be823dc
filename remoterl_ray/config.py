"""Where settings come from: explicit arguments first, then environment variables."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from .protocol.limits import RESUME_WINDOW

Number = TypeVar("Number", int, float)

DEFAULT_RELAY_URL = "ws://127.0.0.1:8000"

ENV_API_KEY = "REMOTERL_API_KEY"
ENV_RELAY_URL = "REMOTERL_RELAY_URL"
ENV_REGION = "REMOTERL_REGION"
ENV_TIMEOUT = "REMOTERL_TIMEOUT"
ENV_CONNECT_TIMEOUT = "REMOTERL_CONNECT_TIMEOUT"
ENV_SIMULATOR_WAIT = "REMOTERL_SIMULATOR_WAIT"
ENV_TENSORBOARD_DIR = "REMOTERL_TENSORBOARD_DIR"
ENV_ADMIN_TOKEN = "REMOTERL_ADMIN_TOKEN"
ENV_DB = "REMOTERL_DB"  # the relay's accounts store
ENV_MAX_SPACE_BYTES = "REMOTERL_MAX_SPACE_BYTES"  # largest space a simulator may describe
ENV_RESUME_WINDOW = "REMOTERL_RESUME_WINDOW"  # seconds a dropped channel waits to resume (0: never)
ENV_COMPRESSION = "REMOTERL_COMPRESSION"  # auto, none, lz4 or zstd: what a trainer asks simulators for
ENV_MAX_MESSAGE = "REMOTERL_MAX_MESSAGE"  # largest message (bytes) a trainer takes, chunks put together
ENV_CA_FILE = "REMOTERL_CA_FILE"  # PEM CA certificates clients trust instead of the system store
DEFAULT_DB = "~/.remoterl/relay.db"


def resolve_api_key(api_key: str | None) -> str | None:
    return api_key or os.environ.get(ENV_API_KEY) or None


def resolve_relay_url(relay_url: str | None) -> str:
    """``relay_url``, else ``REMOTERL_RELAY_URL``, else the default; an ``http://`` or
    ``https://`` URL (how the dashboard's address reads) means ``ws://`` / ``wss://``."""
    url = relay_url or os.environ.get(ENV_RELAY_URL) or DEFAULT_RELAY_URL
    for web, socket in (("http://", "ws://"), ("https://", "wss://")):
        if url.lower().startswith(web):
            return socket + url[len(web):]
    return url


def resolve_ca_file(path: str | None) -> str | None:
    """The CA file clients verify the relay with: ``path``, else ``REMOTERL_CA_FILE``;
    None means the system trust store. Absolute, since settings travel to
    processes (RLlib env runners) that may start in another directory."""
    chosen = path or os.environ.get(ENV_CA_FILE) or None
    return os.path.abspath(os.path.expanduser(chosen)) if chosen else None


def _positive(
    value: Number | None,
    env_var: str,
    default: Number,
    parse: Callable[[Any], Number],
    what: str,
    *,
    zero: bool = False,
) -> Number:
    """``value``, else ``env_var`` parsed with ``parse``, else ``default``; it must be positive
    (or zero, with ``zero``)."""
    if value is None:
        raw = os.environ.get(env_var)
        if not raw:
            return default
        try:
            value = parse(raw)
        except ValueError:
            raise ValueError(f"{env_var} must be {what}, got {raw!r}") from None
    if value < 0 or (value == 0 and not zero):
        raise ValueError(f"{what} must be {'zero or more' if zero else 'positive'}, got {value}")
    return parse(value)


def resolve_seconds(value: float | None, env_var: str, default: float) -> float:
    """A positive number of seconds from ``value``, else ``env_var``, else ``default``."""
    return _positive(value, env_var, default, float, "a number of seconds")


def resolve_resume_window(value: float | None, default: float = RESUME_WINDOW) -> float:
    """Seconds a channel whose connection dropped waits to resume: ``value``, else
    ``REMOTERL_RESUME_WINDOW``, else ``default``; 0 turns resuming off."""
    return _positive(value, ENV_RESUME_WINDOW, default, float, "the resume window (seconds)", zero=True)


def resolve_compression(value: str | None) -> str:
    """What a trainer asks simulators to compress: ``value``, else ``REMOTERL_COMPRESSION``, else ``auto``."""
    from .protocol.compression import SETTINGS

    chosen = value or os.environ.get(ENV_COMPRESSION) or "auto"
    if chosen not in SETTINGS:
        raise ValueError(f"compression must be one of {', '.join(SETTINGS)}, got {chosen!r}")
    return chosen


def resolve_count(value: int | None, env_var: str, default: int) -> int:
    """A positive count from ``value``, else ``env_var``, else ``default``."""
    return _positive(value, env_var, default, int, "a whole number")


def resolve_tensorboard_dir(path: str | None) -> str | None:
    return path or os.environ.get(ENV_TENSORBOARD_DIR) or None


def resolve_db(path: str | None) -> str:
    """The accounts store's path: ``path``, else ``REMOTERL_DB``, else ``~/.remoterl/relay.db``."""
    return os.path.expanduser(path or os.environ.get(ENV_DB) or DEFAULT_DB)

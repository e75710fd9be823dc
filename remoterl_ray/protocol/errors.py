"""Stable error codes and the typed exceptions a trainer re-raises.

Every error that crosses the wire carries ``code`` (one of :class:`ErrorCode`,
never renamed once released), a human ``message`` and, when it came from a
Python exception on the far side, ``remote_type`` (that exception's class
name). :func:`error_from_wire` turns such a record back into the matching
exception class, so user code can ``except UnknownEnvError`` and the like.

When ``remote_type`` names a class on the allowlist (built-in ``Exception``
classes, ``gymnasium.error``'s classes, and those given to
:func:`register_remote_exception`), the rebuilt exception is also an instance
of that local class, so code written for local envs (``except TypeError``,
RLlib's ``except StepFailedRecreateEnvError``) catches it unchanged. The name
is only ever a key of that dict: nothing is imported or looked up by it.
"""

from __future__ import annotations

import builtins
import threading
from enum import Enum
from typing import Any, TypeVar

from .limits import MAX_ERROR_MESSAGE


class ErrorCode(str, Enum):
    """Wire error codes. Values are part of the protocol: append, never rename."""

    BAD_FRAME = "bad_frame"  # not a binary frame, short header, unknown kind
    BAD_PAYLOAD = "bad_payload"  # payload could not be decoded / wrong shape of message
    FRAME_TOO_LARGE = "frame_too_large"
    PROTOCOL_VERSION = "protocol_version"
    BAD_HELLO = "bad_hello"
    AUTH_FAILED = "auth_failed"
    NO_SIMULATOR = "no_simulator"
    CAPACITY = "capacity"
    UNKNOWN_CHANNEL = "unknown_channel"
    SIMULATOR_GONE = "simulator_gone"
    RELAY_GONE = "relay_gone"
    UNKNOWN_ENV = "unknown_env"
    UNKNOWN_OP = "unknown_op"
    INVALID_ACTION = "invalid_action"
    REGISTER_REFUSED = "register_refused"
    ENV_CLOSED = "env_closed"
    ENV_ERROR = "env_error"
    TIMEOUT = "timeout"
    UNSUPPORTED = "unsupported"
    KEY_REVOKED = "key_revoked"
    QUOTA_EXCEEDED = "quota_exceeded"
    WORKSPACE_BLOCKED = "workspace_blocked"
    RATE_LIMITED = "rate_limited"
    DISCONNECTED = "disconnected"  # an operator closed this connection
    TLS = "tls_failed"  # the relay's certificate was not trusted, or TLS was expected and not spoken
    CHANNEL_PAUSED = "channel_paused"  # the other end's connection dropped: the channel waits for it to resume
    RESUME_EXPIRED = "resume_expired"  # a paused channel's other end did not come back within the resume window
    RESUME_GAP = "resume_gap"  # a request re-sent after a resume is older than the answers a simulator keeps
    MESSAGE_TOO_LARGE = "message_too_large"  # a message (chunked or expanded) over the receiver's max_message


class RemoteRLError(RuntimeError):
    """Base of every remoterl error; a ``RuntimeError`` so callers can catch broadly."""

    default_code: ErrorCode = ErrorCode.ENV_ERROR

    def __init__(self, message: str, *, code: ErrorCode | str | None = None, remote_type: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = ErrorCode(code) if code is not None else self.default_code
        self.remote_type = remote_type

    def __str__(self) -> str:
        where = f" (remote {self.remote_type})" if self.remote_type else ""
        return f"[{self.code.value}] {self.message}{where}"

    def to_wire(self) -> dict[str, Any]:
        """The error record, its message cut to ``MAX_ERROR_MESSAGE`` characters."""
        return {"code": self.code.value, "message": _cut(self.message), "remote_type": _cut(self.remote_type, 200)}


class ProtocolError(RemoteRLError):
    """The peer sent something the protocol does not allow."""

    default_code = ErrorCode.BAD_FRAME


class FrameTooLargeError(ProtocolError):
    default_code = ErrorCode.FRAME_TOO_LARGE


class ProtocolVersionError(ProtocolError):
    default_code = ErrorCode.PROTOCOL_VERSION


class AuthenticationError(RemoteRLError):
    """The relay rejected the API key."""

    default_code = ErrorCode.AUTH_FAILED


class QuotaExceededError(RemoteRLError):
    """The workspace used up its plan's included traffic: new sessions are refused."""

    default_code = ErrorCode.QUOTA_EXCEEDED


class WorkspaceBlockedError(RemoteRLError):
    """An operator blocked new sessions of this workspace."""

    default_code = ErrorCode.WORKSPACE_BLOCKED


class DisconnectedError(RemoteRLError):
    """A relay operator closed this connection: do not dial again on your own."""

    default_code = ErrorCode.DISCONNECTED


class TLSError(RemoteRLError):
    """A secure connection to the relay could not be made (an untrusted or
    mismatched certificate, an unusable CA file, TLS on one side only).
    Final: retrying cannot fix it, and clients never fall back to an
    unverified or cleartext connection instead."""

    default_code = ErrorCode.TLS


class NoSimulatorError(RemoteRLError):
    """No simulator of this workspace is online (or none has room)."""

    default_code = ErrorCode.NO_SIMULATOR


class SimulatorLostError(RemoteRLError):
    """The simulator hosting an env went away (or the relay did)."""

    default_code = ErrorCode.SIMULATOR_GONE


class RelayUnavailableError(SimulatorLostError):
    """The relay cannot be reached or the connection to it dropped."""

    default_code = ErrorCode.RELAY_GONE


class ChannelPausedError(SimulatorLostError):
    """The other end of a channel lost its connection; the channel waits for it
    to come back and resume (``docs/protocol.md``, resuming). A trainer resumes
    such channels itself: this reaches user code only where resuming is off."""

    default_code = ErrorCode.CHANNEL_PAUSED


class EnvsMadeAgainError(RelayUnavailableError):
    """A trainer's attribute or method call met a lost relay connection, and its envs
    were made again on a new one: they are new envs, so the call is not repeated on
    them. The next call reaches the new envs (the next step reports the episodes
    truncated). Never sent on the wire."""


class RateLimitedError(RelayUnavailableError):
    """Too many refused connection attempts from this address. Transient: clients
    dial again with backoff, as for an unreachable relay."""

    default_code = ErrorCode.RATE_LIMITED


class UnknownEnvError(RemoteRLError):
    default_code = ErrorCode.UNKNOWN_ENV


class InvalidActionError(RemoteRLError, ValueError):
    default_code = ErrorCode.INVALID_ACTION


class RegistrationRefusedError(RemoteRLError):
    """A mirrored ``gym.register`` was refused (allowlist, or a callable entry point)."""

    default_code = ErrorCode.REGISTER_REFUSED


class EnvClosedError(RemoteRLError):
    """A call on an env (or channel) that was already closed."""

    default_code = ErrorCode.ENV_CLOSED


class RemoteEnvError(RemoteRLError):
    """The environment itself raised on the simulator."""

    default_code = ErrorCode.ENV_ERROR


class RemoteTimeoutError(RemoteRLError, TimeoutError):
    default_code = ErrorCode.TIMEOUT


class UnsupportedError(RemoteRLError):
    default_code = ErrorCode.UNSUPPORTED


_CLASS_BY_CODE: dict[ErrorCode, type[RemoteRLError]] = {
    ErrorCode.BAD_FRAME: ProtocolError,
    ErrorCode.BAD_PAYLOAD: ProtocolError,
    ErrorCode.BAD_HELLO: ProtocolError,
    ErrorCode.UNKNOWN_OP: ProtocolError,
    ErrorCode.FRAME_TOO_LARGE: FrameTooLargeError,
    ErrorCode.PROTOCOL_VERSION: ProtocolVersionError,
    ErrorCode.AUTH_FAILED: AuthenticationError,
    ErrorCode.NO_SIMULATOR: NoSimulatorError,
    ErrorCode.CAPACITY: NoSimulatorError,
    ErrorCode.UNKNOWN_CHANNEL: EnvClosedError,
    ErrorCode.ENV_CLOSED: EnvClosedError,
    ErrorCode.SIMULATOR_GONE: SimulatorLostError,
    ErrorCode.RELAY_GONE: RelayUnavailableError,
    ErrorCode.UNKNOWN_ENV: UnknownEnvError,
    ErrorCode.INVALID_ACTION: InvalidActionError,
    ErrorCode.REGISTER_REFUSED: RegistrationRefusedError,
    ErrorCode.ENV_ERROR: RemoteEnvError,
    ErrorCode.TIMEOUT: RemoteTimeoutError,
    ErrorCode.UNSUPPORTED: UnsupportedError,
    ErrorCode.KEY_REVOKED: AuthenticationError,
    ErrorCode.QUOTA_EXCEEDED: QuotaExceededError,
    ErrorCode.WORKSPACE_BLOCKED: WorkspaceBlockedError,
    ErrorCode.RATE_LIMITED: RateLimitedError,
    ErrorCode.DISCONNECTED: DisconnectedError,
    ErrorCode.TLS: TLSError,
    ErrorCode.CHANNEL_PAUSED: ChannelPausedError,
    ErrorCode.RESUME_EXPIRED: SimulatorLostError,
    ErrorCode.RESUME_GAP: ProtocolError,
    ErrorCode.MESSAGE_TOO_LARGE: FrameTooLargeError,
}


def _cut(text: str | None, limit: int = MAX_ERROR_MESSAGE) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f"... ({len(text) - limit} more characters)"


def exception_type_name(cls: type) -> str:
    """How a class is named in ``remote_type``: bare for builtins ("TypeError"),
    else "module.Qualname" ("gymnasium.error.NameNotFound")."""
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


# The allowlist: remote_type -> the local class a rebuilt error also derives from.
_LOCAL_CLASSES: dict[str, type[Exception]] = {}
# (code class, local class) -> the class deriving from both, or None if they cannot be combined.
_COMBINED: dict[tuple[type[RemoteRLError], type[Exception]], type[RemoteRLError] | None] = {}
_lock = threading.Lock()
_gymnasium_registered = False


# Control flow, not errors: an env raising one of these is still an ordinary failure here.
_NOT_REBUILT = frozenset({StopIteration, StopAsyncIteration})


def _rebuildable(cls: type) -> bool:
    """False for ``StopIteration``'s kin (control flow, not errors). Other classes
    qualify; C-level fields (``OSError.errno``, ``AttributeError.name``) stay unset,
    and a class that cannot be combined with a remote error and constructed from a
    message alone (``UnicodeDecodeError``) falls back to the plain remote error."""
    return not any(issubclass(cls, flow) for flow in _NOT_REBUILT)


_E = TypeVar("_E", bound=type[Exception])


def register_remote_exception(cls: _E) -> _E:
    """Let errors whose ``remote_type`` names ``cls`` also be instances of it
    (usable as a class decorator). ``cls`` must be an ``Exception`` subclass
    that a remote error can also be, built from a message alone; it is keyed
    by its "module.Qualname", the name a simulator reports."""
    if not isinstance(cls, type) or not issubclass(cls, Exception):
        raise TypeError(f"only Exception subclasses can be registered, got {cls!r}")
    if issubclass(cls, RemoteRLError):
        raise TypeError(f"{cls.__qualname__} is a remoterl error already")
    if not _rebuildable(cls) or _combined(RemoteEnvError, cls) is None:
        raise TypeError(f"{cls.__qualname__} cannot be rebuilt from a message alone")
    _LOCAL_CLASSES[exception_type_name(cls)] = cls
    return cls


for _cls in vars(builtins).values():
    if isinstance(_cls, type) and issubclass(_cls, Exception) and _rebuildable(_cls):
        _LOCAL_CLASSES[exception_type_name(_cls)] = _cls
del _cls


def _register_gymnasium() -> None:
    """``gymnasium.error``'s classes, imported on the first error that names
    one (the protocol layer does not import gymnasium otherwise)."""
    global _gymnasium_registered
    with _lock:
        if _gymnasium_registered:
            return
        try:
            import gymnasium.error
        except ImportError:
            classes: list[Any] = []
        else:
            classes = list(vars(gymnasium.error).values())
        for cls in classes:
            if isinstance(cls, type) and issubclass(cls, Exception) and cls.__module__ == "gymnasium.error":
                if _rebuildable(cls):  # DeprecatedWrapper is an ImportError: its name/path stay local
                    _LOCAL_CLASSES.setdefault(exception_type_name(cls), cls)
        _gymnasium_registered = True


def local_class(remote_type: object) -> type[Exception] | None:
    """The allowlisted local class ``remote_type`` names, else None."""
    if not isinstance(remote_type, str):
        return None
    if remote_type.startswith("gymnasium.") and not _gymnasium_registered:
        _register_gymnasium()
    return _LOCAL_CLASSES.get(remote_type)


def _rebuild(base: type[RemoteRLError], local: type[Exception], message: str) -> RemoteRLError:
    """Unpickles a combined error (pickle and Ray cannot import a class made at run time)."""
    combined = _combined(base, local) or base
    return combined(message)


def _reduce(self: RemoteRLError) -> tuple[Any, ...]:
    base, local = self._remote_bases
    return _rebuild, (base, local, self.message), dict(vars(self))


def _combined(base: type[RemoteRLError], local: type[Exception]) -> type[RemoteRLError] | None:
    """The class deriving from both (made once per pair), or None if they do not combine."""
    key = (base, local)
    with _lock:
        if key in _COMBINED:
            return _COMBINED[key]
        cls: type[RemoteRLError] | None
        try:
            name = f"{base.__qualname__}[{exception_type_name(local)}]"
            cls = type(name, (base, local), {"__module__": __name__, "__qualname__": name,
                                            "_remote_bases": (base, local), "__reduce__": _reduce})
            str(cls("probe", remote_type=name))  # constructs and prints like its base, or is refused
        except Exception:
            cls = None
        _COMBINED[key] = cls
        return cls


def _error_class(code: ErrorCode, remote_type: object) -> type[RemoteRLError]:
    cls = _CLASS_BY_CODE.get(code, RemoteRLError)
    local = local_class(remote_type)
    if local is None or issubclass(cls, local):
        return cls
    return _combined(cls, local) or cls


def error_from_wire(record: Any) -> RemoteRLError:
    """Build the typed exception for an error record received from a peer.

    A record that is not a well-formed error becomes a ``ProtocolError`` rather
    than raising while handling another error.
    """
    if not isinstance(record, dict):
        return ProtocolError(f"malformed error record: {type(record).__name__}")
    try:
        code = ErrorCode(record.get("code"))
    except ValueError:
        code = ErrorCode.ENV_ERROR
    message = _cut(str(record.get("message", ""))) or ""
    remote_type = record.get("remote_type")
    shown = _cut(str(remote_type), 200) if remote_type else None
    try:
        cls = _error_class(code, remote_type)
        return cls(message, code=code, remote_type=shown)
    except Exception:  # never fail while reporting an error
        return _CLASS_BY_CODE.get(code, RemoteRLError)(message, code=code, remote_type=shown)

"""How a relay closes a peer's WebSocket, and what the peer reads back from it.

A refusal or cut-off is a close frame with code 1008 and the reason
``"<error code>: <message>"``, so the peer raises the same typed error the
relay meant (:func:`closing_error` is :func:`close_reason` read back).
"""

from __future__ import annotations

from .errors import ErrorCode, RemoteRLError, error_from_wire

CLOSE_POLICY = 1008  # RFC 6455: the peer broke a rule (revoked key, operator action, refused hello)
CLOSE_PROTOCOL_ERROR = 1002  # RFC 6455: the peer's hello was not our protocol
MAX_REASON = 120  # a close frame's reason must fit in 123 bytes
CLOSE_NORMAL = 1000  # RFC 6455: a peer closing on purpose (shutdown, env closed)
CLOSE_MOVING = 1001  # RFC 6455 "going away": a peer dialling another relay replica, its channels to resume there


def said_goodbye(code: int | None) -> bool:
    """A peer's close ``code`` says it left on purpose, or broke the rules: its
    channels end now. Any other departure (no close frame, a lost network, a
    heartbeat missed) may be followed by the peer resuming its channels."""
    return code in (CLOSE_NORMAL, CLOSE_POLICY, CLOSE_PROTOCOL_ERROR)


def close_reason(error: RemoteRLError) -> str:
    """``"<error code>: <message>"``, cut to fit a close frame."""
    return f"{error.code.value}: {error.message}"[:MAX_REASON]


def closing_error(code: int, reason: str) -> RemoteRLError | None:
    """The typed error a relay closed us with, or None if the close was not a refusal."""
    if code != CLOSE_POLICY:
        return None
    error_code, _, message = reason.partition(": ")
    if error_code not in ErrorCode._value2member_map_:
        return None
    return error_from_wire({"code": error_code, "message": message})

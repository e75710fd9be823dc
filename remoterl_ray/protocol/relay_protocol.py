"""The relay's side of one peer's connection, without I/O.

The ASGI driver (``relay.app``) reads WebSocket messages and hands them here;
this decides what each one is: the hello (checked for size, shape and
version before anything is believed), a frame to forward, a control request
for the switchboard, or a refusal, with the error frame to send back and
whether the peer has used up its budget of refusals and must be cut off.
Forwarding stays a header read: payloads are never decoded here.

States::

    AWAITING_HELLO --hello--> OPEN --too many refusals--> CLOSED
          \\--bad hello (ProtocolError raised)-------------------^
"""

from __future__ import annotations

import enum
import time
from typing import Any, NamedTuple

from .errors import ErrorCode, FrameTooLargeError, ProtocolError, ProtocolVersionError, RemoteRLError
from .frames import CHUNK_OPS, HEADER, HEADER_SIZE, SUPPORTED_VERSIONS, VALID_OPS, Kind, payload_of, unpack_header
from .messages import Forget, Hello, Locate, Open, Release, Resume, error_frame, parse_hello, parse_peer_control

_FORWARDED = frozenset({Kind.REQUEST, Kind.RESPONSE, Kind.ERROR})
_CHUNKED = frozenset({Kind.REQUEST, Kind.RESPONSE})  # may come in chunks (an op with the MORE bit)
_CONTROLS = {"trainer": (Open, Release, Locate, Resume, Forget), "simulator": (Resume, Forget)}


class State(enum.Enum):
    AWAITING_HELLO = "awaiting_hello"
    OPEN = "open"
    CLOSED = "closed"


class ErrorBudget:
    """Error replies one connection may cause: ``limit`` at once, refilled at
    ``limit`` a minute. Every refused frame costs one, so a peer cannot make the
    relay answer (and queue answers) without end, while a long-lived peer's rare
    mistakes never add up to a cut-off."""

    def __init__(self, limit: int, refill_seconds: float = 60.0) -> None:
        self.limit = limit
        self.rate = limit / refill_seconds
        self.left = float(limit)
        self.at = time.monotonic()

    def spend(self, now: float | None = None) -> bool:
        """Take one; False once the budget is gone (the peer is then cut off)."""
        now = time.monotonic() if now is None else now
        self.left = min(float(self.limit), self.left + (now - self.at) * self.rate) - 1
        self.at = now
        return self.left >= 0


# -- events --


class Forward(NamedTuple):
    """A REQUEST, RESPONSE or ERROR frame for the switchboard to route by its channel."""

    data: bytes
    kind: int
    op: int
    channel: int
    seq: int


class ControlRequest(NamedTuple):
    """A trainer's Open, Release or Locate (answered with ``seq``), or a peer's
    Resume or Forget (``op`` and ``channel`` are the header's, echoed if acting on
    it fails)."""

    message: Any
    op: int
    channel: int
    seq: int


class Refuse(NamedTuple):
    """Tell the peer ``error`` in ``frame`` (its header echoes what the peer can match
    on, never an invalid op); ``cut_off``: it has used up its budget, close it."""

    error: RemoteRLError
    op: int
    channel: int
    seq: int
    frame: bytes
    cut_off: bool


Event = Forward | ControlRequest | Refuse


class RelayPeerProtocol:
    """One peer's connection as the relay sees it (see the module docstring)."""

    def __init__(self, max_frame: int, max_protocol_errors: int) -> None:
        self.state = State.AWAITING_HELLO
        self.role = ""
        self.max_frame = max_frame  # payload bytes, as announced in the welcome
        self._max_size = max_frame + HEADER_SIZE
        self.errors = ErrorBudget(max_protocol_errors)

    def receive_hello(self, data: bytes | None) -> Hello:
        """The peer's first message: its hello, else a ``ProtocolError`` coded
        ``bad_hello`` (or ``ProtocolVersionError``) and the connection is CLOSED."""
        if self.state is not State.AWAITING_HELLO:
            raise RuntimeError(f"receive_hello in state {self.state.value}")
        try:
            if data is None:
                raise ProtocolError("the hello must be a binary frame", code=ErrorCode.BAD_HELLO)
            if unpack_header(data).kind != Kind.CONTROL:
                raise ProtocolError("the first frame must be a CONTROL hello", code=ErrorCode.BAD_HELLO)
            hello = parse_hello(payload_of(data))
            if hello.protocol not in SUPPORTED_VERSIONS:
                raise ProtocolVersionError(
                    f"protocol version {hello.protocol} is not supported; this relay speaks {sorted(SUPPORTED_VERSIONS)}"
                )
        except ProtocolError as exc:
            self.state = State.CLOSED
            code = exc.code if isinstance(exc, ProtocolVersionError) else ErrorCode.BAD_HELLO
            raise type(exc)(exc.message, code=code) from None
        self.state, self.role = State.OPEN, hello.role
        return hello

    def forward_of(self, data: bytes) -> Forward | None:
        """``data`` as a ``Forward`` if it is a well-formed one, with no side effect
        (the relay's fast path asks this as frames arrive); None: ask :meth:`receive`."""
        if self.state is not State.OPEN or not HEADER_SIZE <= len(data) <= self._max_size:
            return None
        kind, op, channel, seq = HEADER.unpack_from(data)
        if kind in _FORWARDED and (op in VALID_OPS or (op in CHUNK_OPS and kind in _CHUNKED)):
            return Forward(data, kind, op, channel, seq)
        return None

    def receive(self, data: bytes | None) -> Event:
        """One message after the hello (``None``: a text message)."""
        if data is not None:
            forward = self.forward_of(data)
            if forward is not None:
                return forward
        if self.state is not State.OPEN:  # before the hello, or cut off: nothing more is taken
            return Refuse(*self._closed_refusal())
        if data is None:
            return self.refuse(ProtocolError("text frames are not part of the protocol"), 0, 0, 0)
        size = len(data)
        if size < HEADER_SIZE:
            return self.refuse(ProtocolError(f"frame of {size} bytes is shorter than the header"), 0, 0, 0)
        kind, op, channel, seq = HEADER.unpack_from(data)
        echo_op = op if op in VALID_OPS else 0
        if size > self._max_size:
            error: RemoteRLError = FrameTooLargeError(
                f"frame of {size - HEADER_SIZE} bytes exceeds the limit of {self.max_frame}"
            )
            return self.refuse(error, echo_op, channel, seq)
        if kind in _FORWARDED:  # (a valid one took the fast path above)
            return self.refuse(ProtocolError(f"unknown op {op}", code=ErrorCode.UNKNOWN_OP), 0, channel, seq)
        if kind == Kind.CONTROL:
            try:
                message = parse_peer_control(payload_of(data))
            except ProtocolError as exc:
                return self.refuse(exc, echo_op, channel, seq)
            if not isinstance(message, _CONTROLS.get(self.role, ())):
                error = ProtocolError(
                    f"unexpected control message {message.op!r} from a {self.role}", code=ErrorCode.BAD_PAYLOAD
                )
                return self.refuse(error, echo_op, channel, seq)
            return ControlRequest(message, echo_op, channel, seq)
        return self.refuse(ProtocolError(f"unknown frame kind {kind}"), echo_op, channel, seq)

    def _closed_refusal(self) -> tuple[RemoteRLError, int, int, int, bytes, bool]:
        error = ProtocolError(f"the connection is {self.state.value}")
        return error, 0, 0, 0, error_frame(error.to_wire()), True

    def refuse(self, error: RemoteRLError, op: int, channel: int, seq: int) -> Refuse:
        """A refusal of one frame (also for errors the driver meets acting on a
        control request); spends from the budget and closes when it is gone."""
        cut_off = not self.errors.spend()
        if cut_off:
            self.state = State.CLOSED
        return Refuse(error, op, channel, seq, error_frame(error.to_wire(), op=op, channel=channel, seq=seq), cut_off)

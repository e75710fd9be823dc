"""The trainer's and the simulator's side of a relay connection, without I/O.

Like the ``websockets`` library's sans-I/O ``Protocol``: frames go in through
:meth:`ClientProtocol.receive`, frames to send come out of
:meth:`ClientProtocol.request` and :meth:`ClientProtocol.answer`, and what a
frame means comes out as a typed event. A driver (``transport.connection``)
only moves bytes and waits; every rule of the connection lives here: the
greeting, sequence ids, which answer belongs to which request, channels the
relay reported lost, the frame limit and why the connection closed. Not
thread-safe: the driver serialises calls (it holds one lock around them).

States::

    GREETING --welcome--> OPEN --lost / closed--> CLOSED
        \\--refused / bad answer---------------------^

Resuming (``docs/protocol.md``): a channel the relay reports ``Paused`` is
dead here (its requests end in ``ChannelPausedError``, its later answers are
dropped); the channel ids a ``Resumed`` gives tokens are kept in
``resumed`` for the caller, who sends the unanswered requests again with
:meth:`ClientProtocol.resend`.

Large messages: a request or answer above the relay's frame limit leaves as
chunks when the relay forwards them (``chunks.py``); chunks coming in are put
back together here within ``max_message``, and only for a request of ours
that awaits its answer (a trainer) or, on a simulator, within that same bound
for all unfinished requests at once.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from . import codec, chunks
from .chunks import ChunkError, Reassembly
from .closing import closing_error
from .errors import (
    ChannelPausedError,
    ErrorCode,
    FrameTooLargeError,
    ProtocolError,
    RelayUnavailableError,
    RemoteRLError,
    RemoteTimeoutError,
    SimulatorLostError,
    error_from_wire,
)
from .frames import HEADER_SIZE, MAX_SEQ, MORE, Kind, Op, payload_of, unpack_header
from .limits import DEFAULT_DECODE, MAX_CLAIMS_PER_PEER, MAX_MESSAGE, PLAIN_DECODE, DecodeLimits
from .messages import (
    CAP_CHUNKS,
    Detach,
    Hello,
    Paused,
    Reconnect,
    Resumed,
    Welcome,
    control_frame,
    error_frame,
    parse_control,
)

class State(enum.Enum):
    GREETING = "greeting"
    OPEN = "open"
    CLOSED = "closed"


@dataclass
class Reply:
    """One answer to a request: a RESPONSE (or CONTROL) payload, or the error it raised."""

    kind: int
    op: int
    channel: int
    payload: memoryview | None = None
    error: RemoteRLError | None = None
    limits: DecodeLimits = DEFAULT_DECODE  # its compressed arrays expand to the receiver's max_message at most

    def value(self) -> Any:
        if self.error is not None:
            raise self.error
        assert self.payload is not None
        return codec.unpackb(self.payload, self.limits)


@dataclass
class Pending:
    """A request in flight: what its answer must carry to be accepted, and the answer."""

    seq: int
    channel: int
    op: int
    kind: int  # REQUEST (answered by the simulator owning ``channel``) or CONTROL (by the relay)
    payload: bytes = b""  # kept (not copied) to send it again after a resume
    reply: Reply | None = None

    def accepts(self, kind: int, op: int, channel: int) -> bool:
        """An answer on another channel, or for another op, is not this request's,
        whatever its seq says (a simulator can guess the seqs of other shards)."""
        if channel != self.channel or op != self.op:
            return False
        if self.kind == Kind.REQUEST:
            return kind == Kind.RESPONSE or kind == Kind.ERROR
        return kind == Kind.CONTROL or kind == Kind.ERROR


# -- events: what a received frame means, beyond answering a pending request (tuples: cheap per frame) --


class Request(NamedTuple):
    """A trainer's request for the simulator to answer (:meth:`ClientProtocol.answer`)."""

    op: int
    channel: int
    seq: int
    payload: memoryview


class Control(NamedTuple):
    """An unsolicited control message from the relay (Simulators, Detach, Reconnect,
    Notice, and Paused and Resumed after the protocol noted them)."""

    message: Any


class ChannelLost(NamedTuple):
    """The relay says a channel died (its simulator left); its requests fail with ``error``."""

    channel: int
    error: RemoteRLError


class RelayReported(NamedTuple):
    """An error the relay sent that answers no request of ours."""

    channel: int
    error: RemoteRLError


class Dropped(NamedTuple):
    """A frame that was dropped; ``what`` names the kind of problem (for rate-limited logs)."""

    what: str
    detail: str


class Unreadable(NamedTuple):
    """A trainer's request refused before it was read (a chunked message over this
    simulator's limit, or malformed): answer ``error`` to it."""

    op: int
    channel: int
    seq: int
    error: RemoteRLError


Event = Request | Control | ChannelLost | RelayReported | Dropped | Unreadable


@dataclass
class Counters:
    bytes_sent: int = 0
    bytes_received: int = 0
    frames_sent: int = 0
    frames_received: int = 0


class ClientProtocol:
    """One connection's rules for a trainer or a simulator (see the module docstring)."""

    def __init__(self, hello: Hello, seqs: Callable[[], int] | None = None, max_message: int = MAX_MESSAGE) -> None:
        """``seqs``: where request seqs come from (a trainer shares one ``SeqCounter``
        over its connections, so a resumed channel's seqs keep growing);
        ``max_message``: the largest message taken in, however many chunks it came in."""
        self.hello = hello
        self.trainer = hello.role == "trainer"
        self.state = State.GREETING
        self.welcome: Welcome | None = None
        self.max_frame = 0  # the relay's payload limit, from its welcome
        self.close_error: RemoteRLError | None = None
        self.lost_channels: dict[int, RemoteRLError] = {}
        self.channels: set[int] = set()  # channels we sent requests on: only these can be lost
        self.pending: dict[int, Pending] = {}
        self.counters = Counters()
        self.paused: set[int] = set()  # channels the relay reported paused: dead ids here
        self.resumed: dict[str, int] = {}  # token -> its channel id now, until the caller takes it
        self.move_asked = False  # the relay asked us to dial again (Reconnect): another replica serves us
        self._seqs = seqs
        self._seq = itertools.count(1)
        self.max_message = max_message
        self.decode_limits = DecodeLimits(max_expanded=max_message)  # for answers (requests travel raw)
        self.chunking = False  # the relay forwards chunks (its welcome says so)
        # A trainer takes chunks only of answers to its own requests (each within max_message): what it
        # holds is what it asked for. A simulator holds max_message of unfinished requests in all.
        self.reassembly = Reassembly(max_message, max_pending=(1 << 62) if self.trainer else max_message, max_frame=1)
        self.request_limits: dict[int, int] = {}  # op -> a smaller max_message for that op's requests (a simulator)
        self.peer_limits: dict[int, int] = {}  # channel -> the other end's max_message (0: one frame only)

    # -- greeting -----------------------------------------------------------

    def hello_frame(self) -> bytes:
        return control_frame(self.hello)

    def receive_welcome(self, frame: bytes | str) -> Welcome:
        """The relay's answer to the hello: its ``Welcome``, else the typed error it
        refused us with (the connection is then CLOSED)."""
        if self.state is not State.GREETING:
            raise RuntimeError(f"receive_welcome in state {self.state.value}")
        try:
            if isinstance(frame, str):
                raise ProtocolError("relay answered the hello with a text frame")
            header = unpack_header(frame)
            payload = payload_of(frame)
            if header.kind == Kind.ERROR:
                raise error_from_wire(codec.unpackb(payload, PLAIN_DECODE))
            message = parse_control(payload)
            if not isinstance(message, Welcome):
                raise ProtocolError(f"relay answered the hello with {message.op!r}")
        except RemoteRLError as exc:
            self._close(exc)
            raise
        self.welcome, self.max_frame, self.state = message, message.max_frame, State.OPEN
        self.chunking = CAP_CHUNKS in message.capabilities
        self.reassembly = Reassembly(self.max_message, self.reassembly.max_pending, max_frame=message.max_frame)
        return message

    # -- sending ------------------------------------------------------------

    def next_seq(self) -> int:
        if self._seqs is not None:
            return self._seqs()
        seq = next(self._seq)
        if seq >= MAX_SEQ:  # wrap well before u32 overflow; old seqs are long answered
            self._seq = itertools.count(1)
            seq = next(self._seq)
        return seq

    def check_open(self) -> None:
        if self.close_error is not None:
            raise self.close_error
        if self.state is not State.OPEN:
            raise RuntimeError("the connection is not greeted yet")

    def check_size(self, frame: bytes) -> None:
        if len(frame) - HEADER_SIZE > self.max_frame:
            raise FrameTooLargeError(
                f"frame payload of {len(frame) - HEADER_SIZE} bytes exceeds the relay's limit of {self.max_frame}"
            )

    def frames(self, kind: int, op: int, channel: int, seq: int, payload: bytes) -> list[bytes]:
        """The frames that carry ``payload``: chunks when it passes the relay's frame
        limit and the relay forwards them, else one frame (``FrameTooLargeError`` if
        it does not fit)."""
        size = len(payload)
        if size > self.max_frame:
            peer = self.peer_limits.get(channel)  # None: not known here (a resumed channel's new id)
            if not self.chunking or kind == Kind.CONTROL or peer == 0:
                why = "" if self.chunking else " (and the relay does not forward chunked messages)"
                raise FrameTooLargeError(
                    f"frame payload of {size} bytes exceeds the relay's limit of {self.max_frame}"
                    + (why or (" (and the simulator takes one frame per message)" if peer == 0 else ""))
                )
            if peer is not None and size > peer:
                raise FrameTooLargeError(
                    f"a message of {size} bytes exceeds the simulator's limit of {peer} (its max_message)",
                    code=ErrorCode.MESSAGE_TOO_LARGE,
                )
        return chunks.split(kind, op, channel, seq, payload, self.max_frame)

    def request(self, kind: int, op: int, channel: int, payload: bytes) -> tuple[Pending, list[bytes]]:
        """A request to send: its pending entry (the answer lands there) and its frame.
        Refused at once on a closed connection or a channel the relay reported lost."""
        self.check_open()
        if channel in self.lost_channels:
            raise self.lost_channels[channel]
        if channel in self.paused:
            raise ChannelPausedError(f"channel {channel} is paused: the other end's connection dropped")
        return self._register(self.next_seq(), kind, op, channel, payload)

    def resend(self, pending: Pending, channel: int) -> tuple[Pending, list[bytes]]:
        """``pending``'s request again, with its seq, on ``channel`` (its channel after a
        resume, on this or another connection): the simulator answers a seq it already
        ran from memory."""
        self.check_open()
        return self._register(pending.seq, pending.kind, pending.op, channel, pending.payload)

    def _register(self, seq: int, kind: int, op: int, channel: int, payload: bytes) -> tuple[Pending, list[bytes]]:
        frames = self.frames(kind, op, channel, seq, payload)
        pending = self.pending[seq] = Pending(seq, channel, op, kind, payload)
        if channel:
            self.channels.add(channel)
        return pending, frames

    def forget(self, pendings: list[Pending]) -> None:
        """Stop expecting answers to these requests (answered, timed out or never sent)."""
        gone = set()
        for pending in pendings:
            if self.pending.get(pending.seq) is pending:  # not a newer request that reuses a wrapped seq
                del self.pending[pending.seq]
                gone.add(pending.seq)
        if gone and self.reassembly.partial:
            self.reassembly.drop_seq(gone)  # an answer half received is not wanted any more

    def forget_channels(self, channels: list[int]) -> None:
        """Channels given back: nothing on them is awaited or remembered any more, so
        what the protocol keeps is bounded by the channels in use."""
        gone = set(channels)
        for seq in [seq for seq, pending in self.pending.items() if pending.channel in gone]:
            del self.pending[seq]
        for channel in gone:
            self.lost_channels.pop(channel, None)
            self.peer_limits.pop(channel, None)
            self.reassembly.drop(channel)
        self.channels -= gone
        self.paused -= gone

    def timed_out(self, pending: Pending, timeout: float) -> Reply:
        return Reply(
            Kind.ERROR,
            Op.NONE,
            pending.channel,
            error=RemoteTimeoutError(f"no answer within {timeout}s on channel {pending.channel}"),
        )

    def answer(
        self, op: int, channel: int, seq: int, body: bytes | None, error: dict[str, Any] | None, limit: int = 0
    ) -> list[bytes]:
        """The simulator's answer frames to a :class:`Request`: ``body``, or ``error``
        (a wire error dict). ``limit``: the largest message the trainer takes (0: a
        trainer that takes one frame only). An answer over what can reach the
        trainer becomes that error."""
        if error is None:
            assert body is not None
            size = len(body)
            if size <= self.max_frame or (self.chunking and limit and size <= limit):
                return chunks.split(Kind.RESPONSE, op, channel, seq, body, self.max_frame)
            if self.chunking and limit:
                why = f"the trainer's limit of {limit} (max_message)"
                code = ErrorCode.MESSAGE_TOO_LARGE
            else:
                why = f"the relay's frame limit of {self.max_frame}"
                code = ErrorCode.FRAME_TOO_LARGE
            error = RemoteRLError(f"answer of {size} bytes exceeds {why}", code=code).to_wire()
        return [error_frame(error, op=op, channel=channel, seq=seq)]

    def sent(self, frame: bytes) -> None:
        self.counters.bytes_sent += len(frame)
        self.counters.frames_sent += 1

    # -- receiving ----------------------------------------------------------

    def receive(self, frame: bytes) -> Event | None:
        """One frame from the relay. An answer to a pending request is stored on it
        (None is returned); anything else comes back as an event. Frames read after
        the connection closed are dropped: the close decided every answer."""
        if self.state is not State.OPEN:
            return None
        self.counters.bytes_received += len(frame)
        self.counters.frames_received += 1
        try:
            kind, op, channel, seq = unpack_header(frame)
        except ProtocolError as exc:
            return Dropped("malformed frame", f"dropping malformed frame from the relay: {exc}")
        payload: memoryview | bytes = payload_of(frame)
        pending = self.pending.get(seq) if seq else None
        more = op & MORE
        reassembly = self.reassembly
        if (
            more
            or (reassembly.partial and channel in reassembly.partial)
            or (reassembly.skipping and channel in reassembly.skipping)  # the last chunk of a message passed over
        ) and (kind == Kind.REQUEST or kind == Kind.RESPONSE):
            op &= ~MORE
            if self.trainer and (pending is None or channel in self.paused or not pending.accepts(kind, op, channel)):
                return None  # chunks are kept only for an answer we wait for
            try:
                whole = reassembly.take(
                    kind, op, bool(more), channel, seq, payload, 0 if self.trainer else self.request_limits.get(op, 0)
                )
            except ChunkError as exc:
                return self._unreadable(exc.op, channel, exc)
            if whole is None:
                return None
            payload = memoryview(whole)
        if channel in self.paused and kind != Kind.CONTROL:
            return None  # late news of a channel that moved: its requests were (or will be) sent again
        if pending is not None and not pending.accepts(kind, op, channel):
            return Dropped(
                "mismatched answer",
                f"dropping an answer for seq {seq} that does not match its request (channel {channel} op {op}, "
                f"expected channel {pending.channel} op {pending.op})",
            )
        if kind == Kind.ERROR:
            if pending is None and seq and self.trainer:
                return None  # a late answer to a request that already timed out
            try:
                error: RemoteRLError = error_from_wire(codec.unpackb(payload, PLAIN_DECODE))
            except ProtocolError as exc:
                error = exc
            if channel and isinstance(error, RelayUnavailableError):
                # On a channel a simulator may be the sender: it can lose its own channel, never
                # pass for the relay (which would have every shard of the session made again).
                error = SimulatorLostError(f"channel {channel}: {error.message}")
            if channel and isinstance(error, ChannelPausedError):
                # Only the relay pauses a channel, in a CONTROL frame: an ERROR saying so on a
                # channel may be a simulator's, and fails its own shard only.
                error = SimulatorLostError(f"channel {channel}: {error.message}")
            if pending is not None:
                if pending.reply is None:
                    pending.reply = Reply(kind, op, channel, error=error)
                return None
            if channel and self.trainer:  # seq 0 on a channel: its simulator is gone
                if channel not in self.channels:
                    return None  # not a channel of ours: nothing to remember
                self.fail_channel(channel, error)
                return ChannelLost(channel, error)
            return RelayReported(channel, error)
        if pending is not None:
            if pending.reply is None:
                pending.reply = Reply(kind, op, channel, payload=payload, limits=self.decode_limits)
            return None
        if kind == Kind.REQUEST:
            return Request(op, channel, seq, payload)
        if kind == Kind.CONTROL:
            try:
                message = parse_control(payload)
            except ProtocolError as exc:
                return Dropped("malformed control", f"dropping malformed control message: {exc}")
            if isinstance(message, Paused):
                for gone in message.channels:
                    self.reassembly.drop(gone)  # what was coming on it will be sent again, whole
                self.pause(message.channels)
            elif isinstance(message, Detach):
                self.channel_closed(message.channel)
            elif isinstance(message, Reconnect):
                self.move_asked = True
            elif isinstance(message, Resumed):
                for rebound in message.channels:
                    if len(self.resumed) >= MAX_CLAIMS_PER_PEER:
                        self.resumed.pop(next(iter(self.resumed)))  # never asked for, or never taken
                    self.resumed[rebound.token] = rebound.channel
            return Control(message)
        return None  # a late answer to a request that already timed out

    def channel_closed(self, channel: int) -> None:
        """A simulator's channel ended (closed, detached): a request half received on it is dropped."""
        self.reassembly.drop(channel)

    def _unreadable(self, op: int, channel: int, exc: ChunkError) -> Event | None:
        """A chunked message refused: its request fails (a trainer), or is answered
        with the error (a simulator)."""
        if not self.trainer:
            return Unreadable(op, channel, exc.seq, exc)
        pending = self.pending.get(exc.seq)
        if pending is not None and pending.reply is None and pending.channel == channel:
            pending.reply = Reply(Kind.ERROR, op, channel, error=exc)
        return Dropped("chunked message refused", f"channel {channel}: {exc}")

    def pause(self, channels: list[int]) -> None:
        """These channels' other end dropped: their requests end in ``ChannelPausedError``
        (the caller resumes the channel and sends them again)."""
        resumed = set(self.resumed.values())
        mine = [c for c in channels if (c in self.channels or c in resumed) and c not in self.lost_channels]
        self.paused.update(mine)
        for token in [t for t, c in self.resumed.items() if c in mine]:
            del self.resumed[token]  # claimed ahead, then paused again before its env came for it
        for channel in mine:
            error = ChannelPausedError(f"channel {channel} is paused: the other end's connection dropped")
            for pending in self.pending.values():
                if pending.channel == channel and pending.reply is None:
                    pending.reply = Reply(Kind.ERROR, Op.NONE, channel, error=error)

    def fail_channel(self, channel: int, error: RemoteRLError) -> None:
        """``channel`` is lost for good: its requests, now and later, end in ``error``."""
        self.paused.discard(channel)
        self.lost_channels[channel] = error
        for pending in self.pending.values():
            if pending.channel == channel and pending.reply is None:
                pending.reply = Reply(Kind.ERROR, Op.NONE, channel, error=error)

    # -- closing ------------------------------------------------------------

    def connection_lost(self, code: int | None = None, reason: str = "", detail: str = "") -> RemoteRLError:
        """The socket closed (``code``/``reason`` of the relay's close frame, if any)."""
        if self.close_error is None:
            typed = closing_error(code, reason) if code is not None else None
            self._close(typed or RelayUnavailableError(f"connection to the relay was lost{detail}"))
        assert self.close_error is not None
        return self.close_error

    def close(self, why: str = "connection to the relay was closed (shutdown or env closed)") -> None:
        if self.close_error is None:
            self._close(RelayUnavailableError(why))

    def _close(self, error: RemoteRLError) -> None:
        self.state, self.close_error = State.CLOSED, error
        for pending in self.pending.values():
            if pending.reply is None:
                pending.reply = Reply(Kind.ERROR, Op.NONE, pending.channel, error=error)

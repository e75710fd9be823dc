"""Messages larger than one frame: cut into chunks, put back together within bounds.

A payload above the relay's frame limit travels as several frames of the same
kind, channel and seq, of ``CHUNK_BYTES`` each (or the frame limit, if that is
smaller): small enough that several senders' chunks queued for one reader at
the relay stay far below its cap. Every frame but the last has the ``MORE``
bit set in its op byte; the first one's payload opens with the whole
message's size (u64, little endian). The relay forwards chunks like any frame (it only counts a
step on the last one, whose op is the plain op) and never puts them together:
only the receiving peer does, here.

A sender sends one message's chunks back to back on its connection, so on a
channel the chunks of one message never interleave with another's. A receiver
keeps at most one message in progress per channel, refuses a first chunk that
announces more than its ``max_message`` (or a smaller limit for that kind of
request) before it keeps a byte, holds no more than ``max_pending`` bytes of
unfinished messages in all, and refuses a message whose chunks do not add up
to what was announced, or whose chunks but the last are under half the chunk
size (so a message's parts, each a frame kept alive, number at most twice
its size over the chunk size). The rest of a refused
message's chunks are passed over as they come, never read as a new message.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .errors import ErrorCode, ProtocolError
from .frames import HEADER, MORE

SIZE_PREFIX = struct.Struct("<Q")
CHUNK_BYTES = 1 << 20
MAX_SKIPPING = 4096  # refused messages whose last chunks are still due, remembered at once


class ChunkError(ProtocolError):
    """A chunked message refused; ``seq`` is the message's (its request fails, or is answered so)."""

    default_code = ErrorCode.BAD_FRAME

    def __init__(self, message: str, *, seq: int, op: int, code: ErrorCode = ErrorCode.BAD_FRAME) -> None:
        super().__init__(message, code=code)
        self.seq = seq
        self.op = op


def chunk_size(max_frame: int) -> int:
    return min(max_frame, CHUNK_BYTES)


def split(kind: int, op: int, channel: int, seq: int, payload: bytes | memoryview, max_frame: int) -> list[bytes]:
    """The frames that carry ``payload``: one frame if it fits ``max_frame`` payload
    bytes, else chunks of ``chunk_size(max_frame)`` (the last one shorter)."""
    size = len(payload)
    if size <= max_frame:
        return [HEADER.pack(kind, op, channel, seq) + payload]
    step = chunk_size(max_frame)
    view = memoryview(payload)
    first = step - SIZE_PREFIX.size
    frames = [HEADER.pack(kind, op | MORE, channel, seq) + SIZE_PREFIX.pack(size) + view[:first]]
    more = HEADER.pack(kind, op | MORE, channel, seq)
    pos = first
    while size - pos > step:
        frames.append(more + view[pos : pos + step])
        pos += step
    frames.append(HEADER.pack(kind, op, channel, seq) + view[pos:])
    return frames


@dataclass
class _Partial:
    kind: int
    op: int
    seq: int
    size: int  # announced
    parts: list[memoryview] = field(default_factory=list)
    got: int = 0
    held: int = 0  # of ``got``, what counts against ``max_pending`` (all but the last chunk)


class Reassembly:
    """The chunked messages in progress on one connection (see the module docstring)."""

    def __init__(self, max_message: int, max_pending: int, max_frame: int) -> None:
        self.max_message = max_message
        self.max_pending = max_pending
        self.min_chunk = chunk_size(max_frame) // 2
        self.partial: dict[int, _Partial] = {}  # by channel
        self.pending_bytes = 0
        self.skipping: dict[int, int] = {}  # channel -> seq of a refused message whose chunks still come

    def take(
        self, kind: int, op: int, more: bool, channel: int, seq: int, payload: memoryview, limit: int = 0
    ) -> memoryview | bytes | None:
        """The whole message once ``payload`` completes it (or is one by itself), None
        while more chunks are due; raises :class:`ChunkError` for a message refused
        (its chunks are dropped and the rest of them passed over; a message in
        progress on ``channel`` that this frame does not continue is refused, and
        this frame's message passed over). ``limit``: a smaller bound than
        ``max_message`` for this kind of request."""
        if self.skipping and self.skipping.get(channel) == seq:
            if not more:
                del self.skipping[channel]  # its last chunk: the channel's next message is new
            return None
        try:
            return self._take(kind, op, more, channel, seq, payload, limit)
        except ChunkError:
            if more:  # more of this frame's message is on its way: pass over it
                if len(self.skipping) >= MAX_SKIPPING:
                    self.skipping.pop(next(iter(self.skipping)))
                self.skipping[channel] = seq
            raise

    def _take(
        self, kind: int, op: int, more: bool, channel: int, seq: int, payload: memoryview, limit: int
    ) -> memoryview | bytes | None:
        partial = self.partial.get(channel)
        if partial is not None and (partial.seq != seq or partial.kind != kind or partial.op != op):
            self.drop(channel)
            raise ChunkError(
                f"channel {channel}: a chunked message (seq {partial.seq}) was cut off by another frame",
                seq=partial.seq,
                op=partial.op,
            )
        if partial is None:
            if not more:
                return payload
            if len(payload) < SIZE_PREFIX.size:
                raise ChunkError("the first chunk of a message lacks its size", seq=seq, op=op)
            (size,) = SIZE_PREFIX.unpack_from(payload)
            limit = min(limit, self.max_message) if limit else self.max_message
            if size > limit:
                raise ChunkError(
                    f"a chunked message of {size} bytes exceeds this peer's limit of {limit}",
                    seq=seq,
                    op=op,
                    code=ErrorCode.MESSAGE_TOO_LARGE,
                )
            payload = payload[SIZE_PREFIX.size :]
            partial = self.partial[channel] = _Partial(kind, op, seq, size)
        got = partial.got + len(payload)
        if got > partial.size or (not more and got != partial.size) or (more and len(payload) < self.min_chunk):
            self.drop(channel)
            raise ChunkError(
                f"a chunked message's chunks do not add up to its {partial.size} bytes in chunks of at least "
                f"{self.min_chunk}",
                seq=seq,
                op=op,
            )
        if more and self.pending_bytes + len(payload) > self.max_pending:
            self.drop(channel)
            raise ChunkError(
                f"unfinished chunked messages would hold more than {self.max_pending} bytes",
                seq=seq,
                op=op,
                code=ErrorCode.MESSAGE_TOO_LARGE,
            )
        partial.parts.append(payload)
        partial.got = got
        if more:
            partial.held += len(payload)
            self.pending_bytes += len(payload)
            return None
        self.drop(channel)
        return b"".join(partial.parts)

    def drop(self, channel: int) -> None:
        """Forget ``channel``'s message in progress (refused, finished, or its channel gone)."""
        partial = self.partial.pop(channel, None)
        if partial is not None:
            self.pending_bytes -= partial.held
        self.skipping.pop(channel, None)

    def drop_seq(self, seqs: set[int]) -> None:
        for channel in [c for c, p in self.partial.items() if p.seq in seqs]:
            self.drop(channel)

"""The binary frame: a fixed 10-byte routing header, then an opaque payload.

The relay reads only the header: it routes ``REQUEST`` frames from a trainer
to the simulator owning ``channel`` and ``RESPONSE``/``ERROR`` frames back,
and meters by ``op`` (a ``STEP`` request on a channel of n envs is n
env-steps). The payload after the header is never parsed by the relay.

Layout (little endian)::

    offset 0  u8   kind      Kind
    offset 1  u8   op        Op (REQUEST/RESPONSE/ERROR), 0 otherwise; bit 7 (``MORE``):
                             a chunk of a larger message, more follow (``chunks.py``)
    offset 2  u32  channel   relay-assigned channel id, 0 = the relay itself
    offset 6  u32  seq       request id chosen by the sender, echoed in the answer
    offset 10 ...  payload
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import NamedTuple

from .errors import ProtocolError

# 2: tuples and object arrays travel as marked arrays, not as payloads nested
# inside extension values (a decoder of version 1 payloads had to recurse).
PROTOCOL_VERSION = 2
SUPPORTED_VERSIONS = frozenset({2})

HEADER = struct.Struct("<BBII")
HEADER_SIZE = HEADER.size  # 10

DEFAULT_MAX_FRAME = 16 * 1024 * 1024  # bytes, header included
MAX_SEQ = 2**32 - 1


class Kind(IntEnum):
    CONTROL = 1  # msgpack map for/from the relay (hello, welcome, open, events)
    REQUEST = 2  # trainer -> simulator, routed by channel
    RESPONSE = 3  # simulator -> trainer, routed by channel
    ERROR = 4  # coded error record (msgpack); from a simulator or the relay


class Op(IntEnum):
    NONE = 0
    MAKE = 1
    MAKE_VEC = 2
    RESET = 3
    STEP = 4
    CLOSE = 5
    SPACES = 6
    REGISTER = 7
    RENDER = 8
    ATTR = 9  # call a method, get or set an attribute of the hosted envs (public names only)


_KINDS = frozenset(int(k) for k in Kind)
VALID_OPS = frozenset(int(o) for o in Op)
MORE = 0x80
CHUNK_OPS = frozenset(op | MORE for op in VALID_OPS if op)  # a REQUEST's or RESPONSE's op on all but its last chunk


class Header(NamedTuple):
    kind: int
    op: int
    channel: int
    seq: int


def pack(kind: int, op: int, channel: int, seq: int, payload: bytes = b"") -> bytes:
    """Return one frame: header + payload."""
    return HEADER.pack(kind, op, channel, seq) + payload


def unpack_header(frame: bytes | bytearray | memoryview) -> Header:
    """Parse and validate the header of ``frame``; raises ``ProtocolError``."""
    if len(frame) < HEADER_SIZE:
        raise ProtocolError(f"frame of {len(frame)} bytes is shorter than the {HEADER_SIZE}-byte header")
    kind, op, channel, seq = HEADER.unpack_from(frame)
    if kind not in _KINDS:
        raise ProtocolError(f"unknown frame kind {kind}")
    if op not in VALID_OPS and (op not in CHUNK_OPS or kind == Kind.CONTROL or kind == Kind.ERROR):
        raise ProtocolError(f"unknown op {op}")
    return Header(kind, op, channel, seq)


def payload_of(frame: bytes) -> memoryview:
    """The opaque payload of ``frame`` without copying it."""
    return memoryview(frame)[HEADER_SIZE:]

"""Lossless compression of the arrays in a payload, chosen per channel at make time.

Camera frames and Atari screens are mostly flat colour: lz4 shrinks a raw
210x160x3 Pong frame to under 1 % of its bytes at gigabytes a second, so
compressing them costs less than sending them. Small float vectors gain
nothing and stay raw. Only the edges compress and decompress; the relay
forwards the bytes as they are.

A channel's :class:`Compression` is agreed at make: the trainer says what it
wants (``"auto"``, ``"none"``, ``"lz4"`` or ``"zstd"``) and which codecs it can
read; the simulator picks from what both have (:func:`negotiate`) and says
which in its description. Decoding needs no agreement: each compressed array
names its codec, and a codec this side lacks is a coded ``bad_payload``.

A compressed array states its raw size (its dtype and shape). The decoder
checks that size against the payload's budget *before* it decompresses
(``codec.unpackb``), and a stream that would expand past it, or stop short of
it, is refused: a 16 MiB frame cannot become gigabytes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any

import lz4.block
import numpy as np
import zstandard
from gymnasium import spaces

from .errors import ErrorCode, ProtocolError

COMPRESS_MIN_BYTES = 4096
"""Arrays smaller than this always travel raw: the codec's own header and call
cost more than they would save."""

SETTINGS = ("auto", "none", "lz4", "zstd")
"""What a trainer may ask for (``init(compression=...)``)."""

ZSTD_LEVEL = 1  # zstd's fastest standard level: about 0.6x lz4's size at 0.6x its speed on Atari frames
_WORTH_IT = 0.9  # a compressed array is sent only when it is at most this fraction of the raw one


class Codec(IntEnum):
    """A codec's id, one byte on the wire before the array's dtype header."""

    LZ4 = 1
    ZSTD = 2


class Scope(str, Enum):
    """Which arrays a channel's compression takes."""

    IMAGES = "images"  # uint8 arrays only (camera frames, screens): what "auto" picks
    ALL = "all"  # every array of an allowed dtype


CODECS = {"lz4": Codec.LZ4, "zstd": Codec.ZSTD}
AVAILABLE = sorted(CODECS)


@dataclass(frozen=True)
class Compression:
    """How one channel's arrays are compressed (None where they are not)."""

    codec: Codec
    scope: Scope = Scope.IMAGES
    min_bytes: int = COMPRESS_MIN_BYTES

    @property
    def name(self) -> str:
        return self.codec.name.lower()

    def takes(self, array: np.ndarray) -> bool:
        if array.nbytes < self.min_bytes:
            return False
        return array.dtype == np.uint8 if self.scope is Scope.IMAGES else True

    def to_wire(self) -> dict[str, Any]:
        return {"codec": self.name, "scope": self.scope.value, "min_bytes": self.min_bytes}


def compress(codec: Codec, raw: memoryview) -> bytes:
    if codec is Codec.LZ4:
        return lz4.block.compress(raw, store_size=False)
    return _zstd_compressor().compress(raw)


def worth_sending(raw_size: int, packed_size: int) -> bool:
    return packed_size <= raw_size * _WORTH_IT


def decompress(codec_id: int, data: memoryview | bytes, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """A new, writable array of ``dtype`` and ``shape`` from ``data``; the caller
    has checked the raw size against its budget. Anything that does not expand to
    exactly that size is refused."""
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    try:
        if codec_id == Codec.LZ4:
            out = lz4.block.decompress(data, uncompressed_size=size, return_bytearray=True)
            if len(out) != size:
                raise ValueError(f"{len(out)} bytes")
            return np.frombuffer(out, dtype=dtype).reshape(shape)
        if codec_id == Codec.ZSTD:
            array = np.empty(shape, dtype)
            view = memoryview(array.reshape(-1).view(np.uint8))
            with _zstd_decompressor().stream_reader(data, read_across_frames=False) as reader:
                got = 0
                while got < size:
                    n = reader.readinto(view[got:])
                    if not n:
                        raise ValueError(f"ends after {got} of {size} bytes")
                    got += n
                if reader.read(1):
                    raise ValueError(f"expands past {size} bytes")
            return array
    except (lz4.block.LZ4BlockError, zstandard.ZstdError, ValueError, MemoryError) as exc:
        raise ProtocolError(
            f"a compressed array does not expand to its {size} bytes: {exc}", code=ErrorCode.BAD_PAYLOAD
        ) from None
    raise ProtocolError(f"unknown compression codec {codec_id}", code=ErrorCode.BAD_PAYLOAD)


def negotiate(asked: Any, readable: Any, observation_space: Any, render_mode: str | None) -> Compression | None:
    """The simulator's choice for a channel: what the trainer ``asked`` for, among the
    codecs it can read. ``auto`` compresses uint8 arrays with lz4 when the env makes
    images (a uint8 observation of at least ``COMPRESS_MIN_BYTES``, or rgb_array
    renders) and nothing otherwise; a codec named outright compresses every large array."""
    if asked is None:
        return None  # a trainer from before compression: it cannot read compressed arrays
    if not isinstance(asked, str) or asked not in SETTINGS:
        raise ProtocolError(f"compression must be one of {', '.join(SETTINGS)}", code=ErrorCode.BAD_PAYLOAD)
    if not isinstance(readable, list) or not all(isinstance(c, str) for c in readable[:8]):
        raise ProtocolError("codecs must be a list of names", code=ErrorCode.BAD_PAYLOAD)
    if asked == "none":
        return None
    if asked == "auto":
        if "lz4" in readable and (render_mode == "rgb_array" or _makes_images(observation_space)):
            return Compression(Codec.LZ4)
        return None
    if asked not in readable:
        raise ProtocolError(
            f"compression {asked!r} was asked for, but the trainer cannot read it", code=ErrorCode.UNSUPPORTED
        )
    return Compression(CODECS[asked], Scope.ALL)


def _makes_images(space: Any, depth: int = 0) -> bool:
    """Whether ``space`` holds a uint8 Box worth compressing (Dict and Tuple spaces searched)."""
    if depth > 16:
        return False
    if isinstance(space, spaces.Box):
        return space.dtype == np.uint8 and int(np.prod(space.shape)) >= COMPRESS_MIN_BYTES
    children = space.spaces.values() if isinstance(space, spaces.Dict) else getattr(space, "spaces", ())
    if isinstance(space, (spaces.Dict, spaces.Tuple)):
        return any(_makes_images(child, depth + 1) for child in children)
    return False


def from_wire(value: Any) -> Compression | None:
    """A description's ``compression`` (what the simulator chose), checked."""
    if value is None:
        return None
    try:
        codec = CODECS[value["codec"]]
        scope = Scope(value.get("scope", Scope.IMAGES.value))
        min_bytes = int(value.get("min_bytes", COMPRESS_MIN_BYTES))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ProtocolError("simulator described an unknown compression", code=ErrorCode.BAD_PAYLOAD) from None
    return Compression(codec, scope, max(min_bytes, 64))


_per_thread = threading.local()


def _zstd_compressor() -> Any:
    """zstd contexts are not thread-safe, and cost to make: one of each per thread."""
    compressor = getattr(_per_thread, "zstd", None)
    if compressor is None:
        compressor = _per_thread.zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return compressor


def _zstd_decompressor() -> Any:
    decompressor = getattr(_per_thread, "unzstd", None)
    if decompressor is None:
        decompressor = _per_thread.unzstd = zstandard.ZstdDecompressor()
    return decompressor

"""Payload codec: msgpack plus extension types, and nothing executable.

Values that travel: None, bool, int, float, str, bytes, list, dict, and

* ``numpy.ndarray`` (ext 1): dtype string, shape, raw C-order bytes;
* numpy scalars (ext 2): dtype string and the raw bytes of the item;
* ``tuple``: an array whose first item is the empty ext 3 marker, so
  Tuple-space samples stay tuples;
* object arrays: an array whose first item is an ext 4 marker holding the
  shape, followed by the elements (vector infos such as ``final_obs``);
* compressed ``numpy.ndarray`` (ext 5): codec id, dtype string, shape, the
  compressed bytes (``compression.py``; only sent where the channel agreed);
* ``collections.defaultdict`` whose factory is a builtin type in
  ``DEFAULT_FACTORIES`` (PettingZoo envs answer rewards in one): an array
  whose first item is an ext 6 marker naming the factory by index, then the
  map. Other factories are code, and such a map travels as a plain dict.

Decoding only ever builds those types: there is no pickle, no class lookup by
name, no eval. Object and void dtypes are refused in raw-array form. Every
payload is first checked by :func:`scan.check_structure` (depth, value count,
layout), and a compressed array's raw size is charged to the payload's
``max_expanded`` before it is decompressed, so decoding allocates no more
than the limits allow and never recurses: tuples and object arrays are rebuilt by msgpack's ``list_hook`` on
the way up, not by decoding nested payloads.
"""

from __future__ import annotations

import functools
import math
import re
import struct
import threading
from collections import defaultdict
from collections.abc import Mapping
from enum import Enum
from typing import Any

import msgpack
import numpy as np

from . import compression as compressing
from .compression import Compression
from .errors import ErrorCode, FrameTooLargeError, ProtocolError
from .limits import DEFAULT_DECODE, MAX_NDIM, MIN_PACKED_CHARGE, DecodeLimits
from .scan import (
    EXT_DEFAULTDICT,
    EXT_NDARRAY,
    EXT_NPSCALAR,
    EXT_OBJARRAY,
    EXT_PACKED,
    EXT_TUPLE,
    StructureError,
    check_structure,
)

__all__ = ["DecodeError", "EncodeError", "packb", "packb_items", "unpackb", "wire_dtype"]

_ALLOWED_KINDS = frozenset("biufcUSMm")
# The dtype strings numpy's ``dtype.str`` gives for those kinds, and nothing
# else reaches numpy's dtype parser: "<f4", "|b1", "<U8", "|S3", "<M8[ns]".
_DTYPE_TEXT = re.compile(r"[<>|=](?:[biufc][1-9][0-9]?|[US][0-9]{1,9}|[Mm]8(?:\[[0-9]{0,3}[a-zA-Z]{1,2}\])?)")
# Arrays of empty strings ("<U0") hold no bytes; their shape is bounded on its own.
_MAX_EMPTY_ITEMS = 1 << 24


class EncodeError(ProtocolError, TypeError):
    """A value that cannot go on the wire (e.g. an arbitrary Python object)."""

    default_code = ErrorCode.BAD_PAYLOAD


class DecodeError(ProtocolError):
    default_code = ErrorCode.BAD_PAYLOAD


def wire_dtype(text: object) -> np.dtype:
    """The numpy dtype a peer named, if it is one that may travel; else ``DecodeError``."""
    if not isinstance(text, str) or not _DTYPE_TEXT.fullmatch(text):
        raise DecodeError(f"dtype {text!r:.40} is not allowed on the wire")
    dtype = np.dtype(text)
    if dtype.kind not in _ALLOWED_KINDS or dtype.fields is not None or (dtype.itemsize == 0 and dtype.kind not in "US"):
        raise DecodeError(f"dtype {text!r} is not allowed on the wire")
    return dtype


# Per (dtype, ndim): the constant header prefix and the struct for the dims.
# Bounded: only allowed dtypes and ndim <= MAX_NDIM are ever cached.
_HEADERS: dict[tuple[str, int], tuple[bytes, struct.Struct]] = {}
_PARSERS: dict[tuple[bytes, int], tuple[np.dtype, struct.Struct]] = {}
_DIMS = [struct.Struct(f"<{n}I") for n in range(MAX_NDIM + 1)]


def _header_parts(dtype: np.dtype, ndim: int) -> tuple[bytes, struct.Struct]:
    key = (dtype.str, ndim)
    parts = _HEADERS.get(key)
    if parts is None:
        if dtype.kind not in _ALLOWED_KINDS or dtype.fields is not None:
            raise EncodeError(f"arrays of dtype {dtype} cannot be sent")
        if ndim > MAX_NDIM:
            raise EncodeError(f"arrays of {ndim} dimensions cannot be sent (max {MAX_NDIM})")
        code = dtype.str.encode("ascii")
        parts = _HEADERS[key] = (bytes([len(code)]) + code + bytes([ndim]), _DIMS[ndim])
    return parts


def _dtype_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    prefix, dims = _header_parts(dtype, len(shape))
    return prefix + dims.pack(*shape)


def _read_dtype_header(data: bytes, start: int = 0) -> tuple[np.dtype, tuple[int, ...], int]:
    """Return (dtype, shape, offset of the raw bytes) of an ext blob whose header
    begins at ``start``."""
    try:
        n = data[start]
        ndim = data[start + 1 + n]
        key = (data[start + 1 : start + 1 + n], ndim)
        parser = _PARSERS.get(key)
        if parser is None:
            if ndim > MAX_NDIM:
                raise DecodeError(f"array has {ndim} dimensions (max {MAX_NDIM})")
            parser = (wire_dtype(key[0].decode("ascii")), _DIMS[ndim])
            if len(_PARSERS) < 1024:  # peers choose the keys: keep the cache bounded
                _PARSERS[key] = parser
        dtype, dims = parser
        pos = start + 2 + n
        shape = dims.unpack_from(data, pos)
    except DecodeError:
        raise
    except (IndexError, struct.error, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"malformed array header: {exc}") from None
    return dtype, shape, pos + dims.size


def _ext(code: int, data: bytes) -> msgpack.ExtType:
    # ExtType's own constructor re-validates both fields in Python; ours are
    # valid by construction, and this sits on the per-step path.
    return tuple.__new__(msgpack.ExtType, (code, data))


_TUPLE_MARK = _ext(EXT_TUPLE, b"")


def _shape_header(shape: tuple[int, ...]) -> bytes:
    if len(shape) > MAX_NDIM:
        raise EncodeError(f"arrays of {len(shape)} dimensions cannot be sent (max {MAX_NDIM})")
    return bytes([len(shape)]) + _DIMS[len(shape)].pack(*shape)


# The factories a defaultdict may name on the wire, by index: builtin types whose call takes no
# argument and builds an empty or zero value. The index is all that travels; nothing else is looked up.
DEFAULT_FACTORIES: tuple[type, ...] = (int, float, bool, str, bytes, list, dict, tuple)
# Listed with a make's codecs by a trainer that reads ext 6 (added within protocol version 2): a
# simulator sends defaultdicts as plain maps to a trainer that does not list it.
READS_DEFAULTDICT = "defaultdict"
_FACTORY_INDEX = {factory: index for index, factory in enumerate(DEFAULT_FACTORIES)}
_NO_FACTORY = 255  # defaultdict(None): missing keys raise KeyError, as in a dict


class _DefaultDictMark(int):
    """The decoded ext 6 marker: the factory's index."""


_DEFAULT_MARKS = [_DefaultDictMark(i) for i in range(len(DEFAULT_FACTORIES))] + [_DefaultDictMark(_NO_FACTORY)]


def _default(obj: Any) -> Any:
    cls = type(obj)
    if cls is defaultdict:
        factory = obj.default_factory
        index = _NO_FACTORY if factory is None else _FACTORY_INDEX.get(factory)
        if index is not None:
            return [_ext(EXT_DEFAULTDICT, bytes([index])), dict(obj)]
        return dict(obj)  # its factory is code: the values travel, the default does not
    if cls is np.ndarray:
        if obj.dtype == object:
            return [_ext(EXT_OBJARRAY, _shape_header(obj.shape)), *obj.reshape(-1)]
        return _ext(EXT_NDARRAY, _dtype_header(obj.dtype, obj.shape) + obj.tobytes())
    if cls is tuple:
        return [_TUPLE_MARK, *obj]
    if isinstance(obj, np.generic):  # (an empty np.str_ reports 4 bytes for its 0-byte dtype)
        return _ext(EXT_NPSCALAR, _dtype_header(obj.dtype, ()) + obj.tobytes()[: obj.dtype.itemsize])
    if isinstance(obj, np.ndarray):  # subclasses (np.matrix, ...) travel as plain arrays
        return _default(np.asarray(obj).view(np.ndarray))
    if isinstance(obj, tuple):  # named tuples
        return [_TUPLE_MARK, *obj]
    # strict_types sends subclasses here: normalise them to their base type.
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, list):
        return list(obj)
    raise EncodeError(f"values of type {type(obj).__module__}.{type(obj).__qualname__} cannot be sent")


def _default_plain_maps(obj: Any) -> Any:
    """``_default`` for a peer that does not read ext 6: every defaultdict as a plain map."""
    return dict(obj) if type(obj) is defaultdict else _default(obj)


def _compressing(policy: Compression, base: Any = _default) -> Any:
    """``base`` for a channel that compresses: arrays ``policy`` takes go as ext 5
    when that makes them smaller enough; everything else as ``base`` sends it."""
    codec_byte = bytes([policy.codec])

    def default(obj: Any) -> Any:
        if type(obj) is np.ndarray and obj.dtype != object and policy.takes(obj):
            raw = np.require(obj, requirements="C")  # keeps a 0-d array 0-d (ascontiguousarray would not)
            header = _dtype_header(raw.dtype, raw.shape)  # refuses dtypes that may not travel, as raw
            packed = compressing.compress(policy.codec, memoryview(raw.reshape(-1).view(np.uint8)))
            if compressing.worth_sending(raw.nbytes, len(packed)):
                return _ext(EXT_PACKED, codec_byte + header + packed)
        return base(obj)

    return default


class _ObjectShape(tuple):
    """The decoded ext 4 marker: the shape of the object array its array holds."""


class _Budget:
    """What one payload's compressed arrays may still expand to (one per ``unpackb`` call)."""

    __slots__ = ("left", "limit")

    def __init__(self, limit: int) -> None:
        self.left = self.limit = limit


def _ext_hook(code: int, data: bytes, budget: _Budget | None = None) -> Any:
    if code == EXT_NDARRAY:
        dtype, shape, pos = _read_dtype_header(data)
        count = math.prod(shape)
        if len(data) - pos != count * dtype.itemsize:
            raise DecodeError("array byte count does not match its dtype and shape")
        if dtype.itemsize == 0:
            if count > _MAX_EMPTY_ITEMS:
                raise DecodeError(f"array of {count} empty strings")
            return np.zeros(shape, dtype)
        return np.frombuffer(data, dtype=dtype, offset=pos, count=count).reshape(shape).copy()
    if code == EXT_PACKED:
        if not data:
            raise DecodeError("malformed compressed array")
        dtype, shape, pos = _read_dtype_header(data, 1)
        if dtype.itemsize == 0:
            raise DecodeError("compressed arrays of empty items are not sent")
        size = math.prod(shape) * dtype.itemsize
        limit = 0 if budget is None else budget.limit
        left = -1 if budget is None else budget.left - max(size, MIN_PACKED_CHARGE)
        if left < 0:
            raise DecodeError(
                f"compressed arrays would expand past this payload's limit of {limit} bytes",
                code=ErrorCode.MESSAGE_TOO_LARGE,
            )
        budget.left = left  # type: ignore[union-attr]
        return compressing.decompress(data[0], memoryview(data)[pos:], dtype, shape)
    if code == EXT_NPSCALAR:
        dtype, shape, pos = _read_dtype_header(data)
        if shape or len(data) - pos != dtype.itemsize:
            raise DecodeError("malformed numpy scalar")
        if dtype.itemsize == 0:
            return np.zeros((), dtype)[()]
        return np.frombuffer(data, dtype=dtype, offset=pos, count=1)[0]
    if code == EXT_TUPLE:
        if data:
            raise DecodeError("malformed tuple marker")
        return _TUPLE_MARK
    if code == EXT_OBJARRAY:
        try:
            ndim = data[0]
            if ndim > MAX_NDIM or len(data) != 1 + 4 * ndim:
                raise DecodeError("malformed object array marker")
            return _ObjectShape(_DIMS[ndim].unpack_from(data, 1))
        except IndexError:
            raise DecodeError("malformed object array marker") from None
    if code == EXT_DEFAULTDICT:
        if len(data) != 1 or (data[0] >= len(DEFAULT_FACTORIES) and data[0] != _NO_FACTORY):
            raise DecodeError("malformed defaultdict marker")
        return _DEFAULT_MARKS[min(data[0], len(DEFAULT_FACTORIES))]
    raise DecodeError(f"unknown extension type {code}")


def _list_hook(items: list[Any]) -> Any:
    """Arrays come back as lists, except those a marker opens (checked to sit only there)."""
    if items:
        head = items[0]
        if head is _TUPLE_MARK:
            return tuple(items[1:])
        if type(head) is _ObjectShape:
            if math.prod(head) != len(items) - 1:
                raise DecodeError("object array has the wrong number of elements for its shape")
            out = np.empty(len(items) - 1, dtype=object)
            for i, item in enumerate(items[1:]):
                out[i] = item
            return out.reshape(head)
        if type(head) is _DefaultDictMark:
            if len(items) != 2 or type(items[1]) is not dict:
                raise DecodeError("a defaultdict marker must be followed by exactly one map")
            return defaultdict(None if head == _NO_FACTORY else DEFAULT_FACTORIES[head], items[1])
    return items


_local = threading.local()


def _packer(compression: Compression | None, plain_maps: bool) -> msgpack.Packer:
    """One reusable packer per thread, compression and map rule (``_default`` never packs re-entrantly)."""
    packers = getattr(_local, "packers", None)
    if packers is None:
        packers = _local.packers = {}
    packer = packers.get((compression, plain_maps))
    if packer is None:
        base = _default_plain_maps if plain_maps else _default
        default = base if compression is None else _compressing(compression, base)
        packer = packers[(compression, plain_maps)] = msgpack.Packer(
            default=default, strict_types=True, use_bin_type=True, autoreset=True
        )
    return packer


def packb(obj: Any, compression: Compression | None = None, *, plain_maps: bool = False) -> bytes:
    """Encode ``obj``, its large arrays compressed as ``compression`` says (None:
    raw); raises :class:`EncodeError` for values that cannot travel. ``plain_maps``:
    for a peer that does not list ``READS_DEFAULTDICT``, defaultdicts go as maps."""
    packer = _packer(compression, plain_maps)
    try:
        return packer.pack(obj)
    except EncodeError:
        packer.reset()
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        packer.reset()
        raise EncodeError(f"cannot encode payload: {exc}") from None


def packb_items(
    items: list[Any] | tuple[Any, ...], max_bytes: int, compression: Compression | None = None, *,
    plain_maps: bool = False,
) -> bytes:
    """``packb(list(items))``, built item by item so that it stops, with
    ``FrameTooLargeError``, as soon as it passes ``max_bytes`` (a list of many
    references to one large value costs no more than the limit to refuse)."""
    parts = [msgpack.Packer().pack_array_header(len(items))]
    size = len(parts[0])
    for item in items:
        parts.append(packb(item, compression, plain_maps=plain_maps))
        size += len(parts[-1])
        if size > max_bytes:
            raise FrameTooLargeError(f"answer passes {max_bytes} bytes after {len(parts) - 1} of {len(items)} items")
    return b"".join(parts)


def unpackb(data: bytes | bytearray | memoryview, limits: DecodeLimits = DEFAULT_DECODE) -> Any:
    """Decode a payload within ``limits``; raises :class:`DecodeError` for anything
    malformed or beyond them (checked before anything is built)."""
    try:
        packed = check_structure(data, limits)
    except StructureError as exc:
        raise DecodeError(exc.message) from None
    hook = functools.partial(_ext_hook, budget=_Budget(limits.max_expanded)) if packed else _ext_hook
    try:
        return msgpack.unpackb(
            data, ext_hook=hook, list_hook=_list_hook, raw=False, strict_map_key=False, use_list=True
        )
    except ProtocolError:  # ours, from a hook (compression.decompress among them)
        raise
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise DecodeError(f"cannot decode payload: {type(exc).__name__}: {exc}") from None


def wire_safe(mapping: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``mapping`` that can travel, enums as their values (an env's
    metadata may hold anything; what cannot travel is left out)."""
    out = {}
    for key, value in mapping.items():
        if isinstance(value, Enum):  # e.g. a vector env's autoreset_mode
            value = value.value
        try:
            packb(value)
        except EncodeError:
            continue
        out[str(key)] = value
    return out

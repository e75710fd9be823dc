"""Payload codec: msgpack plus three extension types, and nothing executable.

Values that travel: None, bool, int, float, str, bytes, list, dict, and

* ``tuple`` (ext 3) so Tuple-space samples stay tuples;
* ``numpy.ndarray`` (ext 1): dtype string, shape, raw C-order bytes;
* numpy scalars (ext 2): dtype string and the raw bytes of the item;
* object arrays (ext 4): shape plus their elements, each encoded recursively
  (vector infos such as ``final_obs`` use them).

Decoding only ever builds those types: there is no pickle, no class lookup by
name, no eval. Object and void dtypes are refused in raw-array form.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from enum import Enum
from typing import Any

import msgpack
import numpy as np

from .errors import ErrorCode, ProtocolError

EXT_NDARRAY = 1
EXT_NPSCALAR = 2
EXT_TUPLE = 3
EXT_OBJARRAY = 4

_MAX_NDIM = 32
_ALLOWED_KINDS = frozenset("biufcUSMm")
_U8 = struct.Struct("<B")
_DIM = struct.Struct("<Q")


class EncodeError(ProtocolError, TypeError):
    """A value that cannot go on the wire (e.g. an arbitrary Python object)."""

    default_code = ErrorCode.BAD_PAYLOAD


class DecodeError(ProtocolError):
    default_code = ErrorCode.BAD_PAYLOAD


def _dtype_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    code = dtype.str.encode("ascii")
    return b"".join(
        [_U8.pack(len(code)), code, _U8.pack(len(shape)), *(_DIM.pack(d) for d in shape)]
    )


def _read_dtype_header(data: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
    """Return (dtype, shape, offset of the raw bytes) of an ext blob."""
    try:
        n = data[0]
        dtype = np.dtype(data[1 : 1 + n].decode("ascii"))
        pos = 1 + n
        ndim = data[pos]
        pos += 1
        if ndim > _MAX_NDIM:
            raise DecodeError(f"array has {ndim} dimensions (max {_MAX_NDIM})")
        shape = tuple(_DIM.unpack_from(data, pos + 8 * i)[0] for i in range(ndim))
        pos += 8 * ndim
    except (IndexError, struct.error, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"malformed array header: {exc}") from None
    if dtype.kind not in _ALLOWED_KINDS or dtype.fields is not None:
        raise DecodeError(f"dtype {dtype.str!r} is not allowed on the wire")
    return dtype, shape, pos


def _check_dtype(dtype: np.dtype) -> None:
    if dtype.kind not in _ALLOWED_KINDS or dtype.fields is not None:
        raise EncodeError(f"arrays of dtype {dtype} cannot be sent")


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            payload = packb([obj.shape, [o for o in obj.reshape(-1)]])
            return msgpack.ExtType(EXT_OBJARRAY, payload)
        _check_dtype(obj.dtype)
        return msgpack.ExtType(EXT_NDARRAY, _dtype_header(obj.dtype, obj.shape) + obj.tobytes())
    if isinstance(obj, np.generic):
        _check_dtype(obj.dtype)
        return msgpack.ExtType(EXT_NPSCALAR, _dtype_header(obj.dtype, ()) + obj.tobytes())
    if isinstance(obj, tuple):
        return msgpack.ExtType(EXT_TUPLE, packb(list(obj)))
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


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_NDARRAY:
        dtype, shape, pos = _read_dtype_header(data)
        count = int(np.prod(shape, dtype=np.uint64)) if shape else 1
        if len(data) - pos != count * dtype.itemsize:
            raise DecodeError("array byte count does not match its dtype and shape")
        return np.frombuffer(data, dtype=dtype, offset=pos, count=count).reshape(shape).copy()
    if code == EXT_NPSCALAR:
        dtype, shape, pos = _read_dtype_header(data)
        if shape or len(data) - pos != dtype.itemsize:
            raise DecodeError("malformed numpy scalar")
        return np.frombuffer(data, dtype=dtype, offset=pos, count=1)[0]
    if code == EXT_TUPLE:
        items = unpackb(data)
        if not isinstance(items, list):
            raise DecodeError("malformed tuple")
        return tuple(items)
    if code == EXT_OBJARRAY:
        record = unpackb(data)
        if not (isinstance(record, list) and len(record) == 2):
            raise DecodeError("malformed object array")
        shape, items = record
        if not isinstance(shape, tuple) or not isinstance(items, list):
            raise DecodeError("malformed object array")
        out = np.empty(len(items), dtype=object)
        for i, item in enumerate(items):
            out[i] = item
        try:
            return out.reshape(shape)
        except (ValueError, TypeError) as exc:
            raise DecodeError(f"malformed object array: {exc}") from None
    raise DecodeError(f"unknown extension type {code}")


def packb(obj: Any) -> bytes:
    """Encode ``obj``; raises :class:`EncodeError` for values that cannot travel."""
    try:
        return msgpack.packb(obj, default=_default, strict_types=True, use_bin_type=True)
    except EncodeError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(f"cannot encode payload: {exc}") from None


def unpackb(data: bytes | memoryview) -> Any:
    """Decode a payload; raises :class:`DecodeError` for anything malformed."""
    try:
        return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False, use_list=True)
    except DecodeError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise DecodeError(f"cannot decode payload: {type(exc).__name__}: {exc}") from None

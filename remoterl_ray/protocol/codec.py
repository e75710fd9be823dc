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
import threading
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


class EncodeError(ProtocolError, TypeError):
    """A value that cannot go on the wire (e.g. an arbitrary Python object)."""

    default_code = ErrorCode.BAD_PAYLOAD


class DecodeError(ProtocolError):
    default_code = ErrorCode.BAD_PAYLOAD


# Per (dtype, ndim): the constant header prefix and the struct for the dims.
# Bounded: only allowed dtypes and ndim <= _MAX_NDIM are ever cached.
_HEADERS: dict[tuple[str, int], tuple[bytes, struct.Struct]] = {}
_PARSERS: dict[tuple[bytes, int], tuple[np.dtype, struct.Struct]] = {}


def _header_parts(dtype: np.dtype, ndim: int) -> tuple[bytes, struct.Struct]:
    key = (dtype.str, ndim)
    parts = _HEADERS.get(key)
    if parts is None:
        if dtype.kind not in _ALLOWED_KINDS or dtype.fields is not None:
            raise EncodeError(f"arrays of dtype {dtype} cannot be sent")
        if ndim > _MAX_NDIM:
            raise EncodeError(f"arrays of {ndim} dimensions cannot be sent (max {_MAX_NDIM})")
        code = dtype.str.encode("ascii")
        parts = _HEADERS[key] = (bytes([len(code)]) + code + bytes([ndim]), struct.Struct(f"<{ndim}I"))
    return parts


def _dtype_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    prefix, dims = _header_parts(dtype, len(shape))
    return prefix + dims.pack(*shape)


def _read_dtype_header(data: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
    """Return (dtype, shape, offset of the raw bytes) of an ext blob."""
    try:
        n = data[0]
        ndim = data[1 + n]
        key = (data[1 : 1 + n], ndim)
        parser = _PARSERS.get(key)
        if parser is None:
            if ndim > _MAX_NDIM:
                raise DecodeError(f"array has {ndim} dimensions (max {_MAX_NDIM})")
            dtype = np.dtype(key[0].decode("ascii"))
            if dtype.kind not in _ALLOWED_KINDS or dtype.fields is not None:
                raise DecodeError(f"dtype {dtype.str!r} is not allowed on the wire")
            parser = (dtype, struct.Struct(f"<{ndim}I"))
            if len(_PARSERS) < 1024:  # peers choose the keys: keep the cache bounded
                _PARSERS[key] = parser
        dtype, dims = parser
        pos = 2 + n
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


def _default(obj: Any) -> Any:
    cls = type(obj)
    if cls is np.ndarray:
        if obj.dtype == object:
            return _ext(EXT_OBJARRAY, packb([obj.shape, list(obj.reshape(-1))]))
        return _ext(EXT_NDARRAY, _dtype_header(obj.dtype, obj.shape) + obj.tobytes())
    if cls is tuple:
        return _ext(EXT_TUPLE, packb(list(obj)))
    if isinstance(obj, np.generic):
        return _ext(EXT_NPSCALAR, _dtype_header(obj.dtype, ()) + obj.tobytes())
    if isinstance(obj, np.ndarray):  # subclasses (np.matrix, ...) travel as plain arrays
        return _default(np.asarray(obj).view(np.ndarray))
    if isinstance(obj, tuple):  # named tuples
        return _ext(EXT_TUPLE, packb(list(obj)))
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


_local = threading.local()


def _new_packer() -> msgpack.Packer:
    return msgpack.Packer(default=_default, strict_types=True, use_bin_type=True, autoreset=True)


def packb(obj: Any) -> bytes:
    """Encode ``obj``; raises :class:`EncodeError` for values that cannot travel."""
    # One reusable packer per thread; nested calls (tuples, object arrays are
    # packed from inside ``_default``) get a fresh one so they never share a buffer.
    packer = getattr(_local, "packer", None)
    if packer is None:
        packer = _new_packer()
    else:
        _local.packer = None
    try:
        return packer.pack(obj)
    except EncodeError:
        packer.reset()
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        packer.reset()
        raise EncodeError(f"cannot encode payload: {exc}") from None
    finally:
        _local.packer = packer


def unpackb(data: bytes | memoryview) -> Any:
    """Decode a payload; raises :class:`DecodeError` for anything malformed."""
    try:
        return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False, use_list=True)
    except DecodeError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise DecodeError(f"cannot decode payload: {type(exc).__name__}: {exc}") from None

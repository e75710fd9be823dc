"""Check a msgpack payload's structure before anything is built from it.

msgpack's own decoder allocates as it goes: a 16 MiB frame of one-byte maps
becomes 16 million dicts, and a decoder that recursed into nested payloads
could be driven off the end of the C stack. :func:`check_structure` walks the
bytes first, iteratively and without allocating per value, and refuses a
payload that nests deeper than ``max_depth``, holds more than ``max_objects``
values, uses map keys other than strings and integers, carries an extension
type the codec does not know, or places a tuple / object-array / defaultdict
marker anywhere but at the head of an array. Only then does ``codec.unpackb`` decode it.
"""

from __future__ import annotations

import struct

from .errors import ErrorCode, ProtocolError
from .limits import DecodeLimits

# Extension types (the codec's): 1 ndarray, 2 numpy scalar, 3 tuple marker, 4 object-array marker,
# 5 compressed ndarray, 6 defaultdict marker.
EXT_NDARRAY = 1
EXT_NPSCALAR = 2
EXT_TUPLE = 3
EXT_OBJARRAY = 4
EXT_PACKED = 5
EXT_DEFAULTDICT = 6
KNOWN_EXTS = frozenset({EXT_NDARRAY, EXT_NPSCALAR, EXT_TUPLE, EXT_OBJARRAY, EXT_PACKED, EXT_DEFAULTDICT})
HEAD_EXTS = frozenset({EXT_TUPLE, EXT_OBJARRAY, EXT_DEFAULTDICT})  # only ever the first item of an array


class StructureError(ProtocolError):
    """A payload that breaks the decoding limits or the codec's layout."""

    default_code = ErrorCode.BAD_PAYLOAD


# What each lead byte is. Kinds:
_SKIP = 0  # a value of fixed size: arg = bytes after the lead byte
_SIZED = 1  # str/bin: arg = width of the length field (0: length in the lead byte)
_ARRAY = 2  # arg = width of the count field (0: count in the lead byte)
_MAP = 3
_EXT = 4  # arg = width of the length field (0: fixext, length from the lead byte)
_BAD = 5

_LEAD: list[tuple[int, int]] = [(_BAD, 0)] * 256
for _b in range(0x00, 0x80):
    _LEAD[_b] = (_SKIP, 0)  # positive fixint
for _b in range(0xE0, 0x100):
    _LEAD[_b] = (_SKIP, 0)  # negative fixint
for _b in range(0x80, 0x90):
    _LEAD[_b] = (_MAP, 0)
for _b in range(0x90, 0xA0):
    _LEAD[_b] = (_ARRAY, 0)
for _b in range(0xA0, 0xC0):
    _LEAD[_b] = (_SIZED, 0)
_LEAD[0xC0] = _LEAD[0xC2] = _LEAD[0xC3] = (_SKIP, 0)  # nil, false, true
_LEAD[0xC4], _LEAD[0xC5], _LEAD[0xC6] = (_SIZED, 1), (_SIZED, 2), (_SIZED, 4)  # bin
_LEAD[0xC7], _LEAD[0xC8], _LEAD[0xC9] = (_EXT, 1), (_EXT, 2), (_EXT, 4)
_LEAD[0xCA], _LEAD[0xCB] = (_SKIP, 4), (_SKIP, 8)  # float32, float64
_LEAD[0xCC], _LEAD[0xCD], _LEAD[0xCE], _LEAD[0xCF] = (_SKIP, 1), (_SKIP, 2), (_SKIP, 4), (_SKIP, 8)  # uint
_LEAD[0xD0], _LEAD[0xD1], _LEAD[0xD2], _LEAD[0xD3] = (_SKIP, 1), (_SKIP, 2), (_SKIP, 4), (_SKIP, 8)  # int
for _b, _size in zip(range(0xD4, 0xD9), (1, 2, 4, 8, 16)):
    _LEAD[_b] = (_EXT, -_size)  # fixext: negative arg = the data size itself
_LEAD[0xD9], _LEAD[0xDA], _LEAD[0xDB] = (_SIZED, 1), (_SIZED, 2), (_SIZED, 4)  # str
_LEAD[0xDC], _LEAD[0xDD] = (_ARRAY, 2), (_ARRAY, 4)
_LEAD[0xDE], _LEAD[0xDF] = (_MAP, 2), (_MAP, 4)
del _b, _size

# Map keys may be strings or integers only (so no structure hides in a key).
_KEY_LEADS = frozenset(
    [*range(0x00, 0x80), *range(0xE0, 0x100), *range(0xA0, 0xC0), 0xCC, 0xCD, 0xCE, 0xCF, 0xD0, 0xD1, 0xD2, 0xD3]
    + [0xD9, 0xDA, 0xDB]
)
_WIDTH = {1: struct.Struct(">B"), 2: struct.Struct(">H"), 4: struct.Struct(">I")}


# Values whose whole size the lead byte tells (fixint, nil, bool, fixstr, numbers): their size; else 0.
_FIXED = [1 + arg if kind == _SKIP else 0 for kind, arg in _LEAD]
for _b in range(0xA0, 0xC0):
    _FIXED[_b] = 1 + (_b & 0x1F)
del _b


def check_structure(data: bytes | bytearray | memoryview, limits: DecodeLimits) -> bool:
    """Raise :class:`StructureError` unless ``data`` is exactly one msgpack value
    within ``limits`` and the codec's layout rules; whether it holds compressed arrays."""
    end = len(data)
    max_depth, max_objects = limits.max_depth, limits.max_objects
    lead, fixed, key_leads, widths = _LEAD, _FIXED, _KEY_LEADS, _WIDTH
    pos = 0
    packed = False
    objects = 1  # values declared so far: the top-level one, then each container's items
    stack: list[tuple[int, bool]] = []  # the enclosing containers' (items left, is a map)
    left, in_map, at_head = 1, False, False  # the top level holds exactly one value
    try:
        while True:
            if not left:
                if not stack:
                    break
                left, in_map = stack.pop()
                continue
            byte = data[pos]
            if in_map and not left & 1 and byte not in key_leads:
                raise StructureError("map keys must be strings or integers")
            left -= 1
            size = fixed[byte]
            if size:  # the common case: a scalar or short string
                pos += size
                at_head = False
                continue
            head, at_head = at_head, False
            kind, arg = lead[byte]
            if kind == _SIZED:
                pos += 1 + arg + widths[arg].unpack_from(data, pos + 1)[0]
            elif kind == _ARRAY or kind == _MAP:
                if arg:
                    count = widths[arg].unpack_from(data, pos + 1)[0]
                    pos += 1 + arg
                else:
                    count = byte & 0x0F
                    pos += 1
                items = count * 2 if kind == _MAP else count
                if len(stack) >= max_depth:
                    raise StructureError(f"payload nests deeper than {max_depth} levels")
                objects += items
                if objects > max_objects:
                    raise StructureError(f"payload holds more than {max_objects} values")
                if items:
                    stack.append((left, in_map))
                    left, in_map, at_head = items, kind == _MAP, kind == _ARRAY
            elif kind == _EXT:
                if arg < 0:
                    size, code_at = -arg, pos + 1
                else:
                    size, code_at = widths[arg].unpack_from(data, pos + 1)[0], pos + 1 + arg
                code = data[code_at]
                if code not in KNOWN_EXTS:
                    raise StructureError(f"unknown extension type {code}")
                if code in HEAD_EXTS and not head:
                    raise StructureError(f"extension type {code} may only open an array")
                if code == EXT_PACKED:
                    if not limits.max_expanded:
                        raise StructureError("compressed arrays are not taken in this payload")
                    packed = True
                pos = code_at + 1 + size
            else:
                raise StructureError(f"byte 0x{byte:02x} is not a msgpack value")
    except (IndexError, struct.error):
        raise StructureError("payload is truncated") from None
    if pos != end:
        raise StructureError("payload is truncated" if pos > end else f"{end - pos} bytes follow the payload's value")
    return packed

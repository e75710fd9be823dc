"""Gymnasium spaces to and from plain descriptions the payload codec can carry.

Lossless for Box (any dtype, ±inf bounds), Discrete (with start),
MultiDiscrete (with start and dtype), MultiBinary, Dict (key order kept),
Tuple, Text (charset order kept), Sequence and OneOf, nested up to
``MAX_SPACE_DEPTH`` deep.

A description comes from a peer, so rebuilding one is bounded: a shared
budget of bytes (``max_bytes``) is charged for every array a space would
allocate *before* it is built, dtypes are numeric, and any malformed field is
a coded ``SpaceCodecError``, never a bare numpy or Python exception.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import math

import numpy as np
from gymnasium import spaces

from .codec import DecodeError, wire_dtype
from .errors import ErrorCode, ProtocolError
from .limits import MAX_NDIM, MAX_SPACE_BYTES, MAX_SPACE_DEPTH


class SpaceCodecError(ProtocolError):
    default_code = ErrorCode.UNSUPPORTED


def _compact(bound: np.ndarray) -> Any:
    """A uniform bound array travels as one scalar (images have 10^5 equal bounds)."""
    flat = bound.reshape(-1)
    if flat.size and np.array_equal(flat, np.full_like(flat, flat[0]), equal_nan=flat.dtype.kind == "f"):
        return flat[0]
    return bound


def space_to_wire(space: spaces.Space) -> dict[str, Any]:
    """Describe ``space`` with codec-safe values only."""
    if isinstance(space, spaces.Box):
        return {
            "type": "Box",
            "low": _compact(space.low),
            "high": _compact(space.high),
            "shape": list(space.shape),
            "dtype": space.dtype.str,
        }
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start), "dtype": space.dtype.str}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec, "start": space.start, "dtype": space.dtype.str}
    if isinstance(space, spaces.MultiBinary):
        n = space.n
        return {"type": "MultiBinary", "n": [int(x) for x in n] if isinstance(n, (tuple, list, np.ndarray)) else int(n)}
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": [[key, space_to_wire(sub)] for key, sub in space.spaces.items()]}
    if isinstance(space, spaces.Tuple):
        return {"type": "Tuple", "spaces": [space_to_wire(sub) for sub in space.spaces]}
    if isinstance(space, spaces.Text):
        return {
            "type": "Text",
            "min_length": int(space.min_length),
            "max_length": int(space.max_length),
            "charset": "".join(space.character_list),
        }
    if isinstance(space, spaces.Sequence):
        return {"type": "Sequence", "space": space_to_wire(space.feature_space), "stack": bool(space.stack)}
    if isinstance(space, spaces.OneOf):
        return {"type": "OneOf", "spaces": [space_to_wire(sub) for sub in space.spaces]}
    raise SpaceCodecError(f"space {type(space).__name__} cannot be sent to a remote peer")


class _Budget:
    """Bytes a description may still make us allocate, charged before each allocation."""

    def __init__(self, limit: int) -> None:
        self.left = limit
        self.limit = limit

    def charge(self, count: int, what: str) -> None:
        self.left -= count
        if self.left < 0:
            raise SpaceCodecError(
                f"space description needs more than {self.limit} bytes ({what}); "
                "raise max_space_bytes if this space is real",
                code=ErrorCode.BAD_PAYLOAD,
            )


def _shape(value: Any) -> tuple[int, ...]:
    """A shape from the wire: at most MAX_NDIM non-negative ints."""
    if not isinstance(value, (list, tuple)) or len(value) > MAX_NDIM:
        raise SpaceCodecError("malformed shape", code=ErrorCode.BAD_PAYLOAD)
    shape = tuple(value)
    if not all(type(d) is int and d >= 0 for d in shape):
        raise SpaceCodecError("malformed shape", code=ErrorCode.BAD_PAYLOAD)
    return shape


def _numeric(text: Any, kinds: str) -> np.dtype:
    """A space's dtype: numeric kinds only (a string dtype of 300 MB per element is a dtype too)."""
    dtype = wire_dtype(text)
    if dtype.kind not in kinds:
        raise SpaceCodecError(f"a space of dtype {dtype.str} cannot be built", code=ErrorCode.BAD_PAYLOAD)
    return dtype


def _array(value: Any, dtype: np.dtype) -> np.ndarray:
    """A bound or nvec from the wire: an array or a scalar (already bounded by the
    payload's own limits, so only what is built from it is charged)."""
    if not isinstance(value, (np.ndarray, np.generic, int, float, bool, list)):
        raise SpaceCodecError(f"malformed array of type {type(value).__name__}", code=ErrorCode.BAD_PAYLOAD)
    return np.asarray(value, dtype=dtype)


def space_from_wire(desc: Any, *, max_bytes: int = MAX_SPACE_BYTES) -> spaces.Space:
    """Rebuild a space from :func:`space_to_wire` output; raises ``SpaceCodecError``.

    ``max_bytes`` bounds the memory of the arrays the space is built of
    (:func:`space_bytes` of the result), charged before each is allocated."""
    return _from_wire(desc, _Budget(max_bytes), 0)


def space_bytes(space: spaces.Space) -> int:
    """About what ``space`` holds in arrays: what a description is charged, and what
    each copy costs when a vector env batches it (``batch_space`` copies it per env)."""
    if isinstance(space, spaces.Box):
        return space.low.nbytes + space.high.nbytes + space.bounded_below.nbytes + space.bounded_above.nbytes
    if isinstance(space, spaces.MultiDiscrete):
        return space.nvec.nbytes + space.start.nbytes
    if isinstance(space, spaces.MultiBinary):
        return math.prod(space.shape)
    if isinstance(space, spaces.Text):
        return 4 * space.max_length
    if isinstance(space, (spaces.Dict, spaces.Tuple, spaces.OneOf)):
        subs = space.spaces.values() if isinstance(space, spaces.Dict) else space.spaces
        return sum(space_bytes(sub) for sub in subs)
    if isinstance(space, spaces.Sequence):
        return space_bytes(space.feature_space) * (2 if space.stack else 1)
    return 16


def _from_wire(desc: Any, budget: _Budget, depth: int) -> spaces.Space:
    if depth > MAX_SPACE_DEPTH:
        raise SpaceCodecError(f"space description nested deeper than {MAX_SPACE_DEPTH}", code=ErrorCode.BAD_PAYLOAD)
    if not isinstance(desc, dict) or not isinstance(desc.get("type"), str):
        raise SpaceCodecError(f"malformed space description: {desc!r:.200}", code=ErrorCode.BAD_PAYLOAD)
    kind = desc["type"]
    try:
        if kind == "Box":
            dtype = _numeric(desc["dtype"], "biuf")
            shape = _shape(desc["shape"])
            budget.charge(math.prod(shape) * (2 * dtype.itemsize + 2), "Box")  # low, high, bounded_below/above
            low = np.broadcast_to(_array(desc["low"], dtype), shape)
            high = np.broadcast_to(_array(desc["high"], dtype), shape)
            return spaces.Box(low=low.copy(), high=high.copy(), shape=shape, dtype=dtype)
        if kind == "Discrete":
            n, start = desc["n"], desc["start"]
            if type(n) is not int or type(start) is not int:
                raise SpaceCodecError("Discrete n and start must be integers", code=ErrorCode.BAD_PAYLOAD)
            return spaces.Discrete(n, start=start, dtype=_numeric(desc.get("dtype", "<i8"), "iu"))
        if kind == "MultiDiscrete":
            dtype = _numeric(desc["dtype"], "iu")
            nvec = _array(desc["nvec"], dtype)
            budget.charge(2 * nvec.nbytes, "MultiDiscrete")  # nvec and start
            return spaces.MultiDiscrete(nvec, dtype=dtype, start=_array(desc["start"], dtype))
        if kind == "MultiBinary":
            n = desc["n"]
            shape = _shape([n] if type(n) is int else n)
            budget.charge(math.prod(shape), "MultiBinary")
            return spaces.MultiBinary(n if type(n) is int else list(shape))
        if kind == "Dict":
            pairs = desc["spaces"]
            if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
                raise SpaceCodecError("Dict spaces must be [key, space] pairs", code=ErrorCode.BAD_PAYLOAD)
            return spaces.Dict({str(k): _from_wire(v, budget, depth + 1) for k, v in pairs})
        if kind == "Tuple":
            return spaces.Tuple([_from_wire(v, budget, depth + 1) for v in _items(desc["spaces"])])
        if kind == "Text":
            max_length, min_length, charset = desc["max_length"], desc["min_length"], desc["charset"]
            if type(max_length) is not int or type(min_length) is not int or not isinstance(charset, str):
                raise SpaceCodecError("malformed Text space description", code=ErrorCode.BAD_PAYLOAD)
            budget.charge(4 * max(0, max_length), "Text")  # a sample may be that long
            return spaces.Text(max_length=max_length, min_length=min_length, charset=charset)
        if kind == "Sequence":
            stack = bool(desc["stack"])
            before = budget.left
            feature = _from_wire(desc["space"], budget, depth + 1)
            if stack:  # Gymnasium keeps a batched copy of a stacked Sequence's feature space
                budget.charge(before - budget.left, "stacked Sequence")
            return spaces.Sequence(feature, stack=stack)
        if kind == "OneOf":
            return spaces.OneOf([_from_wire(v, budget, depth + 1) for v in _items(desc["spaces"])])
    except SpaceCodecError:
        raise
    except DecodeError as exc:
        raise SpaceCodecError(f"malformed {kind} space description: {exc.message}", code=ErrorCode.BAD_PAYLOAD) from None
    except Exception as exc:  # numpy and gymnasium raise many types for bad input; none may escape bare
        raise SpaceCodecError(
            f"malformed {kind} space description: {type(exc).__name__}: {exc}", code=ErrorCode.BAD_PAYLOAD
        ) from None
    raise SpaceCodecError(f"unknown space type {kind!r}")


def _items(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise SpaceCodecError("composite spaces must be a list of descriptions", code=ErrorCode.BAD_PAYLOAD)
    return value


def action_checker(space: spaces.Space) -> Callable[[Any], bool]:
    """A fast membership test for actions of ``space``, built once per env.

    Like ``space.contains`` but tolerant of lossless dtype differences that
    trainers produce all the time (a float64 action for a float32 Box, a
    Python int for a Discrete), and it never warns or raises.
    """
    if isinstance(space, (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
        if isinstance(space, spaces.Box):
            kinds, low, high = "biuf", space.low, space.high
        elif isinstance(space, spaces.Discrete):
            kinds, low, high = "biu", space.start, space.start + space.n - 1
        elif isinstance(space, spaces.MultiDiscrete):
            kinds, low, high = "biu", space.start, space.start + space.nvec - 1
        else:
            kinds, low, high = "biu", 0, 1
        shape = space.shape

        scalar_int = isinstance(space, spaces.Discrete)

        def check_array(action: Any) -> bool:
            if scalar_int and type(action) is int:
                return bool(low <= action <= high)
            try:
                arr = np.asarray(action)
                if arr.shape != shape or arr.dtype.kind not in kinds:
                    return False
                with np.errstate(invalid="ignore"):
                    return bool(((arr >= low) & (arr <= high)).all())
            except Exception:  # a malformed value is simply not a member
                return False

        return check_array
    if isinstance(space, spaces.Dict):
        checks = {key: action_checker(sub) for key, sub in space.spaces.items()}

        def check_dict(action: Any) -> bool:
            return (
                isinstance(action, dict)
                and action.keys() == checks.keys()
                and all(check(action[key]) for key, check in checks.items())
            )

        return check_dict
    if isinstance(space, spaces.Tuple):
        parts = [action_checker(sub) for sub in space.spaces]

        def check_tuple(action: Any) -> bool:
            return (
                isinstance(action, (tuple, list))
                and len(action) == len(parts)
                and all(check(a) for check, a in zip(parts, action))
            )

        return check_tuple

    def check_other(action: Any) -> bool:
        try:
            return bool(space.contains(action))
        except Exception:  # a malformed value is simply not a member
            return False

    return check_other


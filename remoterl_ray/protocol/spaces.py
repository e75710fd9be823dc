"""Gymnasium spaces to and from plain descriptions the payload codec can carry.

Lossless for Box (any dtype, ±inf bounds), Discrete (with start),
MultiDiscrete (with start and dtype), MultiBinary, Dict (key order kept),
Tuple, Text (charset order kept), Sequence and OneOf, nested arbitrarily.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from gymnasium import spaces

from .errors import ErrorCode, ProtocolError


class SpaceCodecError(ProtocolError):
    default_code = ErrorCode.UNSUPPORTED


_MAX_DEPTH = 32


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


def space_from_wire(desc: Any, _depth: int = 0) -> spaces.Space:
    """Rebuild a space from :func:`space_to_wire` output; raises ``SpaceCodecError``."""
    if _depth > _MAX_DEPTH:
        raise SpaceCodecError("space description nested too deeply")
    if not isinstance(desc, dict) or not isinstance(desc.get("type"), str):
        raise SpaceCodecError(f"malformed space description: {desc!r:.200}")
    kind = desc["type"]
    try:
        if kind == "Box":
            dtype = np.dtype(desc["dtype"])
            shape = tuple(int(d) for d in desc["shape"])
            low = np.broadcast_to(np.asarray(desc["low"], dtype=dtype), shape)
            high = np.broadcast_to(np.asarray(desc["high"], dtype=dtype), shape)
            return spaces.Box(low=low.copy(), high=high.copy(), shape=shape, dtype=dtype)
        if kind == "Discrete":
            return spaces.Discrete(int(desc["n"]), start=int(desc["start"]), dtype=np.dtype(desc.get("dtype", "<i8")))
        if kind == "MultiDiscrete":
            return spaces.MultiDiscrete(desc["nvec"], dtype=np.dtype(desc["dtype"]), start=desc["start"])
        if kind == "MultiBinary":
            n = desc["n"]
            return spaces.MultiBinary(n if isinstance(n, int) else [int(x) for x in n])
        if kind == "Dict":
            return spaces.Dict({str(k): space_from_wire(v, _depth + 1) for k, v in desc["spaces"]})
        if kind == "Tuple":
            return spaces.Tuple([space_from_wire(v, _depth + 1) for v in desc["spaces"]])
        if kind == "Text":
            return spaces.Text(
                max_length=int(desc["max_length"]), min_length=int(desc["min_length"]), charset=str(desc["charset"])
            )
        if kind == "Sequence":
            return spaces.Sequence(space_from_wire(desc["space"], _depth + 1), stack=bool(desc["stack"]))
        if kind == "OneOf":
            return spaces.OneOf([space_from_wire(v, _depth + 1) for v in desc["spaces"]])
    except SpaceCodecError:
        raise
    except (KeyError, TypeError, ValueError, AssertionError) as exc:
        raise SpaceCodecError(f"malformed {kind} space description: {exc}") from None
    raise SpaceCodecError(f"unknown space type {kind!r}")


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


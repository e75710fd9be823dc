"""Gymnasium spaces to and from plain descriptions the payload codec can carry.

Lossless for Box (any dtype, ±inf bounds), Discrete (with start),
MultiDiscrete (with start and dtype), MultiBinary, Dict (key order kept),
Tuple, Text (charset order kept), Sequence, OneOf and Graph, nested up to
``MAX_SPACE_DEPTH`` deep; and for user-defined spaces whose codec both sides
registered with :func:`register_space`.

A description comes from a peer, so rebuilding one is bounded: a shared
budget of bytes (``max_bytes``) is charged for every array a space would
allocate *before* it is built, dtypes are numeric, and any malformed field is
a coded ``SpaceCodecError``, never a bare numpy or Python exception.

User-defined spaces travel as ``{"type": "Custom", "name": NAME, "value":
VALUE}``. The name only *selects* among the codecs this process registered:
nothing is imported or looked up by a name from the wire. What is bounded for
them: the nesting depth (a registered ``from_wire`` that calls
:func:`space_from_wire` for its parts shares the caller's depth and budget),
the size of ``VALUE`` (already a decoded payload, and charged to the budget
before ``from_wire`` runs), and errors (anything ``from_wire`` raises becomes
a coded ``bad_payload``). Not bounded: memory ``from_wire`` allocates beyond
what its input measures. Keep it proportional to its input, and check it.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from . import codec
from .codec import DecodeError, wire_dtype
from .errors import ErrorCode, ProtocolError
from .limits import MAX_NDIM, MAX_SPACE_BYTES, MAX_SPACE_DEPTH


class SpaceCodecError(ProtocolError):
    default_code = ErrorCode.UNSUPPORTED


# -- user-defined spaces ------------------------------------------------------

MAX_SPACE_NAME = 64
_NAME = re.compile(r"[A-Za-z0-9_.:/\-]{1,64}")


@dataclass(frozen=True)
class SpaceCodec:
    """How one user-defined space class travels (see :func:`register_space`)."""

    cls: type[spaces.Space]
    name: str
    to_wire: Callable[[spaces.Space], Any]
    from_wire: Callable[[Any], spaces.Space]
    sample_to_wire: Callable[[Any], Any] | None = None
    sample_from_wire: Callable[[Any], Any] | None = None


_registry_lock = threading.Lock()
_codec_by_name: dict[str, SpaceCodec] = {}
_codec_by_class: dict[type, SpaceCodec] = {}


def register_space(
    cls: type[spaces.Space],
    name: str,
    to_wire: Callable[[spaces.Space], Any],
    from_wire: Callable[[Any], spaces.Space],
    *,
    sample_to_wire: Callable[[Any], Any] | None = None,
    sample_from_wire: Callable[[Any], Any] | None = None,
) -> SpaceCodec:
    """Let spaces of the user-defined class ``cls`` travel, under ``name``.

    Call it with the same ``name`` in the simulator *and* the trainer (usually
    at import of the module that defines the space, imported on both sides):
    the wire carries only ``name`` and ``to_wire(space)``, and the receiving
    side rebuilds with *its own* registered ``from_wire``.

    * ``to_wire(space)`` returns a value the payload codec carries (None,
      bool, int, float, str, bytes, list, tuple, dict, numpy arrays);
    * ``from_wire(value)`` rebuilds an instance of ``cls``. ``value`` comes
      from a peer: check it; whatever it raises becomes a coded
      ``SpaceCodecError`` (bad_payload). It may call :func:`space_from_wire`
      for nested spaces (they share the caller's depth and memory budget);
    * ``sample_to_wire`` / ``sample_from_wire`` convert samples the codec
      cannot carry as they are (see ``protocol/space_values.py``); leave them
      out when samples are codec-safe already.

    The class is matched exactly (a subclass needs its own registration).
    Registering a name again replaces it only for a class of the same
    qualified name (the same module imported under two names); another class
    under a taken name is a ``ValueError``.
    """
    if not (isinstance(cls, type) and issubclass(cls, spaces.Space)):
        raise TypeError(f"register_space needs a gymnasium.spaces.Space subclass, got {cls!r}")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"space name must be 1-{MAX_SPACE_NAME} characters of [A-Za-z0-9_.:/-], got {name!r}")
    for fn in (to_wire, from_wire, sample_to_wire, sample_from_wire):
        if fn is not None and not callable(fn):
            raise TypeError(f"register_space needs callables, got {fn!r}")
    entry = SpaceCodec(cls, name, to_wire, from_wire, sample_to_wire, sample_from_wire)
    with _registry_lock:
        taken = _codec_by_name.get(name)
        if taken is not None and taken.cls.__qualname__ != cls.__qualname__:
            raise ValueError(f"space name {name!r} is already registered for {taken.cls.__module__}.{taken.cls.__qualname__}")
        _codec_by_name[name] = entry
        _codec_by_class[cls] = entry
    return entry


def unregister_space(name: str) -> None:
    """Forget the codec registered under ``name`` (tests, plugins unloading)."""
    with _registry_lock:
        entry = _codec_by_name.pop(name, None)
        for cls in [c for c, e in _codec_by_class.items() if e.name == name or e is entry]:
            del _codec_by_class[cls]


def registered_codec(space: spaces.Space) -> SpaceCodec | None:
    """The codec registered for ``type(space)`` exactly, if any."""
    return _codec_by_class.get(type(space))


def _custom_to_wire(entry: SpaceCodec, space: spaces.Space) -> dict[str, Any]:
    try:
        value = entry.to_wire(space)
    except Exception as exc:
        raise SpaceCodecError(f"to_wire of registered space {entry.name!r} failed: {type(exc).__name__}: {exc}") from None
    try:
        codec.packb(value)  # once per env description: fail here, naming the space, not in the send
    except codec.EncodeError as exc:
        raise SpaceCodecError(
            f"to_wire of registered space {entry.name!r} returned a value the payload codec cannot carry: {exc.message}"
        ) from None
    return {"type": "Custom", "name": entry.name, "value": value}


def _value_bytes(value: Any) -> int:
    """About what a decoded value holds: array bytes, string lengths, 16 per other object.
    Iterative: the value is a peer's payload (bounded in depth and count already)."""
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, np.ndarray) and item.dtype != object:
            total += item.nbytes
        elif isinstance(item, np.ndarray):
            total += 8 * item.size
            stack.extend(item.reshape(-1))
        elif isinstance(item, (str, bytes)):
            total += len(item)
        elif isinstance(item, dict):
            total += 16
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            total += 16
            stack.extend(item)
        else:
            total += 16
    return total


def _compact(bound: np.ndarray) -> Any:
    """A uniform bound array travels as one scalar (images have 10^5 equal bounds)."""
    flat = bound.reshape(-1)
    if flat.size and np.array_equal(flat, np.full_like(flat, flat[0]), equal_nan=flat.dtype.kind == "f"):
        return flat[0]
    return bound


def space_to_wire(space: spaces.Space) -> dict[str, Any]:
    """Describe ``space`` with codec-safe values only."""
    entry = _codec_by_class.get(type(space))
    if entry is not None:  # checked first, so a registered subclass of Box travels as itself
        return _custom_to_wire(entry, space)
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
    if isinstance(space, spaces.Graph):
        edge = space.edge_space
        return {
            "type": "Graph",
            "node_space": space_to_wire(space.node_space),
            "edge_space": None if edge is None else space_to_wire(edge),
        }
    raise SpaceCodecError(
        f"space {type(space).__name__} cannot be sent to a remote peer: register its codec with "
        "remoterl_ray.protocol.spaces.register_space(...) on both sides (simulator and trainer)"
    )


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
    (:func:`space_bytes` of the result), charged before each is allocated.
    Called by a registered ``from_wire`` (for the parts of a user-defined
    space), it continues the outer call's depth and budget instead."""
    outer = _rebuilding.get()
    if outer is not None:
        budget, depth = outer
        return _from_wire(desc, budget, depth + 1)
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
    if isinstance(space, spaces.Graph):
        edge = space.edge_space
        return space_bytes(space.node_space) + (0 if edge is None else space_bytes(edge))
    entry = _codec_by_class.get(type(space))
    if entry is not None:  # what its description was charged
        try:
            return max(16, _value_bytes(entry.to_wire(space)))
        except Exception:  # sizing must not fail where the space itself is fine
            return 16
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
        if kind == "Graph":
            return _graph_from_wire(desc, budget, depth)
        if kind == "Custom":
            return _custom_from_wire(desc, budget, depth)
    except SpaceCodecError:
        raise
    except DecodeError as exc:
        raise SpaceCodecError(f"malformed {kind} space description: {exc.message}", code=ErrorCode.BAD_PAYLOAD) from None
    except Exception as exc:  # numpy and gymnasium raise many types for bad input; none may escape bare
        raise SpaceCodecError(
            f"malformed {kind} space description: {type(exc).__name__}: {exc}", code=ErrorCode.BAD_PAYLOAD
        ) from None
    raise SpaceCodecError(f"unknown space type {kind!r}")


_GRAPH_PARTS = ("Box", "Discrete", "Custom")  # Gymnasium's Graph takes Box or Discrete (or a subclass)


def _graph_part(desc: Any, budget: _Budget, depth: int, what: str) -> spaces.Box | spaces.Discrete:
    """A Graph's node or edge space: its kind is checked before it is built, its class after."""
    if not isinstance(desc, dict) or desc.get("type") not in _GRAPH_PARTS:
        raise SpaceCodecError(f"a Graph's {what} must be a Box or a Discrete", code=ErrorCode.BAD_PAYLOAD)
    part = _from_wire(desc, budget, depth + 1)
    if not isinstance(part, (spaces.Box, spaces.Discrete)):
        raise SpaceCodecError(f"a Graph's {what} must be a Box or a Discrete", code=ErrorCode.BAD_PAYLOAD)
    return part


def _graph_from_wire(desc: dict[str, Any], budget: _Budget, depth: int) -> spaces.Graph:
    node = _graph_part(desc["node_space"], budget, depth, "node_space")
    edge_desc = desc["edge_space"]
    edge = None if edge_desc is None else _graph_part(edge_desc, budget, depth, "edge_space")
    return spaces.Graph(node_space=node, edge_space=edge)


# (budget, depth) of the description being rebuilt while a registered from_wire runs
_rebuilding: ContextVar[tuple[_Budget, int] | None] = ContextVar("remoterl_space_rebuilding", default=None)


def _custom_from_wire(desc: dict[str, Any], budget: _Budget, depth: int) -> spaces.Space:
    """A user-defined space, by the codec *this* process registered under the wire's name."""
    name, value = desc["name"], desc["value"]
    if not isinstance(name, str) or len(name) > MAX_SPACE_NAME:
        raise SpaceCodecError("malformed name of a user-defined space", code=ErrorCode.BAD_PAYLOAD)
    entry = _codec_by_name.get(name)
    if entry is None:
        raise SpaceCodecError(
            f"user-defined space {name!r} is not registered here: call "
            "remoterl_ray.protocol.spaces.register_space(...) for it on both sides (simulator and trainer), "
            "e.g. by importing the module that defines it"
        )
    budget.charge(_value_bytes(value), f"user-defined space {name!r}")
    token = _rebuilding.set((budget, depth))
    try:
        space = entry.from_wire(value)
    except SpaceCodecError:
        raise
    except Exception as exc:  # a user's code: whatever it raises is the peer's malformed value
        raise SpaceCodecError(
            f"from_wire of user-defined space {name!r} refused its description: {type(exc).__name__}: {exc}",
            code=ErrorCode.BAD_PAYLOAD,
        ) from None
    finally:
        _rebuilding.reset(token)
    if not isinstance(space, entry.cls):
        raise SpaceCodecError(
            f"from_wire of user-defined space {name!r} returned {type(space).__name__}, not {entry.cls.__name__}",
            code=ErrorCode.BAD_PAYLOAD,
        )
    return space


def _items(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise SpaceCodecError("composite spaces must be a list of descriptions", code=ErrorCode.BAD_PAYLOAD)
    return value

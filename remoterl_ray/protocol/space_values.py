"""Samples of a space that the payload codec cannot carry as they are, to and from the wire.

The codec carries arrays, scalars, tuples, lists and dicts. Two kinds of
sample need more:

* a Graph's ``GraphInstance`` is a named tuple: it travels as the plain tuple
  ``(nodes, edges, edge_links)`` and would come back as one;
* a user-defined space (``spaces.register_space``) may have samples the codec
  cannot encode at all: its ``sample_to_wire`` / ``sample_from_wire`` run.

:func:`sample_converter` and :func:`batch_converter` build, **once per
space**, a :class:`ValueConverter` whose ``to_wire`` runs before
``codec.packb`` and whose ``from_wire`` runs after ``codec.unpackb``. For a
space that holds neither (Box, Discrete, Dict of Boxes, Text, ...) they return
``None``, so ordinary envs pay nothing per step: test ``if conv is not None``.

``from_wire`` reads a peer's values: whatever it is given, it returns the
sample or raises a ``ProtocolError`` with code ``bad_payload`` (a
``codec.DecodeError``). It checks the structure it rebuilds (a Graph sample's
three fields, tuple lengths, Dict keys, OneOf indices), not membership in the
space, which stays the env's call (as locally, the env judges its actions). It
recurses only as deep as the space nests, and spaces from a peer nest at most
``MAX_SPACE_DEPTH`` deep (the builders refuse deeper ones too).
``to_wire`` converts what the local env produced; a value of the wrong
structure passes through unchanged (the peer's ``from_wire`` reports it), and
only a user's ``sample_to_wire`` failing raises (``codec.EncodeError``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.spaces.graph import GraphInstance

from .codec import DecodeError, EncodeError
from .errors import ErrorCode, ProtocolError
from .limits import MAX_SPACE_DEPTH
from .spaces import SpaceCodec, SpaceCodecError, registered_codec

__all__ = ["ValueConverter", "batch_converter", "convert_final_obs", "sample_converter"]

Convert = Callable[[Any], Any]
_ARRAY_LEAVES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
_MESSAGE = 300  # characters of a user's exception text kept in an error


@dataclass(frozen=True)
class ValueConverter:
    """A sample's way to the wire (``to_wire``, before ``codec.packb``) and back
    (``from_wire``, after ``codec.unpackb``)."""

    to_wire: Convert
    from_wire: Convert


def sample_converter(space: spaces.Space) -> ValueConverter | None:
    """Converter for single samples of ``space`` (an env's observation or action,
    a vector env's ``final_obs`` entries); ``None`` when samples need none."""
    return _guarded(_single(space, 0))


def agent_converters(spaces_by_agent: dict[Any, spaces.Space]) -> dict[Any, ValueConverter] | None:
    """Sample converters of a multi-agent env's agents that need one; ``None`` when none does."""
    out = {aid: c for aid, space in spaces_by_agent.items() if (c := sample_converter(space)) is not None}
    return out or None


def convert_agents(
    converters: dict[Any, ValueConverter] | None, values: dict[Any, Any], way: str
) -> dict[Any, Any]:
    """A per-agent map of samples through ``agent_converters``' converters (``way``: ``"to_wire"``
    or ``"from_wire"``); the map itself when no agent needs one."""
    if converters is None or not isinstance(values, dict):
        return values
    return {aid: getattr(converters[aid], way)(v) if aid in converters else v for aid, v in values.items()}


def batch_converter(space: spaces.Space, num_envs: int | None = None) -> ValueConverter | None:
    """Converter for batched samples of a vector env whose *single* space is ``space``,
    in Gymnasium's layout (``batch_space(space, n)``): arrays for Box, Discrete,
    MultiDiscrete and MultiBinary; dicts and tuples of batches for Dict and Tuple;
    a tuple of one sample per env for every other space (Graph, Text, Sequence,
    OneOf, user-defined). ``num_envs``, if given, is the length ``from_wire``
    requires of those tuples. ``None`` when batches need no conversion."""
    if num_envs is not None and (type(num_envs) is not int or num_envs < 0):
        raise ValueError(f"num_envs must be a non-negative int, got {num_envs!r}")
    return _guarded(_batch(space, 0, num_envs))


# -- building ----------------------------------------------------------------


def _check_depth(depth: int) -> None:
    if depth > MAX_SPACE_DEPTH:
        raise SpaceCodecError(f"space nested deeper than {MAX_SPACE_DEPTH}", code=ErrorCode.BAD_PAYLOAD)


def _single(space: spaces.Space, depth: int) -> ValueConverter | None:
    """The converter of one sample of ``space``, or None if it travels as is."""
    _check_depth(depth)
    entry = registered_codec(space)
    if entry is not None:
        return _user(entry)
    if isinstance(space, (*_ARRAY_LEAVES, spaces.Text)):
        return None
    if isinstance(space, spaces.Graph):
        return _graph(space)
    if isinstance(space, spaces.Dict):
        return _dict({key: _single(sub, depth + 1) for key, sub in space.spaces.items()})
    if isinstance(space, spaces.Tuple):
        return _tuple([_single(sub, depth + 1) for sub in space.spaces])
    if isinstance(space, spaces.Sequence):
        if space.stack:  # a stacked Sequence's sample is laid out as a batch of its feature space
            return _batch(space.feature_space, depth + 1, None)
        return _each(_single(space.feature_space, depth + 1), None, "Sequence")
    if isinstance(space, spaces.OneOf):
        return _one_of([_single(sub, depth + 1) for sub in space.spaces])
    return None  # an unregistered user space: its samples travel as they are, or not at all


def _batch(space: spaces.Space, depth: int, num_envs: int | None) -> ValueConverter | None:
    """The converter of a batch of ``space``, following Gymnasium's dispatch on the
    space's class (so a Box subclass batches as arrays, like a Box)."""
    _check_depth(depth)
    if isinstance(space, _ARRAY_LEAVES):
        return None
    if isinstance(space, spaces.Dict):
        return _dict({key: _batch(sub, depth + 1, num_envs) for key, sub in space.spaces.items()})
    if isinstance(space, spaces.Tuple):
        return _tuple([_batch(sub, depth + 1, num_envs) for sub in space.spaces])
    return _each(_single(space, depth), num_envs, "batch")


def _guarded(conv: ValueConverter | None) -> ValueConverter | None:
    """The root's ``from_wire`` lets nothing but a bad_payload ProtocolError escape."""
    if conv is None:
        return None
    inner = conv.from_wire

    def from_wire(value: Any) -> Any:
        try:
            return inner(value)
        except ProtocolError as exc:
            if exc.code is ErrorCode.BAD_PAYLOAD:
                raise
            raise DecodeError(exc.message) from None
        except Exception as exc:  # a check we missed must still end as a coded error
            raise DecodeError(f"malformed sample: {type(exc).__name__}: {_cut(exc)}") from None

    return ValueConverter(conv.to_wire, from_wire)


def _cut(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= _MESSAGE else text[:_MESSAGE] + "..."


# -- Graph -------------------------------------------------------------------


def _graph(space: spaces.Graph) -> ValueConverter:
    node_shape = space.node_space.shape
    edge_shape = None if space.edge_space is None else space.edge_space.shape

    def to_wire(value: Any) -> Any:
        if isinstance(value, tuple) and len(value) == 3:
            return (value[0], value[1], value[2])  # a plain tuple: nothing rides on the named tuple's class
        return value

    def from_wire(value: Any) -> GraphInstance:
        if not isinstance(value, (tuple, list)) or len(value) != 3:
            raise DecodeError("a Graph sample must be a (nodes, edges, edge_links) tuple")
        nodes, edges, links = value
        _features(nodes, node_shape, "nodes")
        if edges is None and links is None:
            return GraphInstance(nodes, None, None)
        if edge_shape is None:
            raise DecodeError("a Graph sample has edges, but its space has no edge space")
        _features(edges, edge_shape, "edges")
        if (
            type(links) is not np.ndarray
            or links.dtype.kind not in "iu"
            or links.shape != (edges.shape[0], 2)
        ):
            raise DecodeError("a Graph sample's edge_links must be an integer array of shape (edges, 2)")
        return GraphInstance(nodes, edges, links)

    return ValueConverter(to_wire, from_wire)


def _features(value: Any, shape: tuple[int, ...], what: str) -> None:
    """One row of features per node (or edge), each of the feature space's shape."""
    if type(value) is not np.ndarray or value.dtype.kind not in "biuf" or value.ndim != 1 + len(shape):
        raise DecodeError(f"a Graph sample's {what} must be a numeric array of one row per item")
    if value.shape[1:] != shape:
        raise DecodeError(f"a Graph sample's {what} have shape {value.shape[1:]}, not {shape}")


# -- containers ----------------------------------------------------------------


def _dict(parts: dict[str, ValueConverter | None]) -> ValueConverter | None:
    convs = [(key, conv) for key, conv in parts.items() if conv is not None]
    if not convs:
        return None

    def to_wire(value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out = dict(value)  # never change the env's own object
        for key, conv in convs:
            if key in out:
                out[key] = conv.to_wire(out[key])
        return out

    def from_wire(value: Any) -> dict[str, Any]:
        if type(value) is not dict:
            raise DecodeError(f"a Dict sample must be a map, not {type(value).__name__}")
        out = dict(value)
        for key, conv in convs:
            if key not in out:
                raise DecodeError(f"a Dict sample lacks key {key!r:.80}")
            out[key] = conv.from_wire(out[key])
        return out

    return ValueConverter(to_wire, from_wire)


def _tuple(parts: Sequence[ValueConverter | None]) -> ValueConverter | None:
    convs = [(i, conv) for i, conv in enumerate(parts) if conv is not None]
    if not convs:
        return None
    size = len(parts)

    def to_wire(value: Any) -> Any:
        if not isinstance(value, (tuple, list)) or len(value) != size:
            return value
        items = list(value)
        for i, conv in convs:
            items[i] = conv.to_wire(items[i])
        return tuple(items)

    def from_wire(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, (tuple, list)) or len(value) != size:
            raise DecodeError(f"a Tuple sample must be a tuple of {size} items")
        items = list(value)
        for i, conv in convs:
            items[i] = conv.from_wire(items[i])
        return tuple(items)

    return ValueConverter(to_wire, from_wire)


def _each(conv: ValueConverter | None, length: int | None, what: str) -> ValueConverter | None:
    """A tuple of items of one space (a Sequence's sample, a per-env batch)."""
    if conv is None:
        return None
    item_to, item_from = conv.to_wire, conv.from_wire

    def to_wire(value: Any) -> Any:
        if not isinstance(value, (tuple, list)):
            return value
        return tuple([item_to(item) for item in value])

    def from_wire(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, (tuple, list)):
            raise DecodeError(f"a {what} must be a tuple, not {type(value).__name__}")
        if length is not None and len(value) != length:
            raise DecodeError(f"a {what} must hold {length} items, not {len(value)}")
        return tuple([item_from(item) for item in value])

    return ValueConverter(to_wire, from_wire)


def _one_of(parts: list[ValueConverter | None]) -> ValueConverter | None:
    """A OneOf sample is ``(index, sample of spaces[index])``; the index keeps its type."""
    if all(conv is None for conv in parts):
        return None
    size = len(parts)

    def index_of(value: Any) -> int | None:
        if isinstance(value, (tuple, list)) and len(value) == 2:
            index = value[0]
            if isinstance(index, (int, np.integer)) and not isinstance(index, (bool, np.bool_)) and 0 <= index < size:
                return int(index)
        return None

    def to_wire(value: Any) -> Any:
        index = index_of(value)
        conv = None if index is None else parts[index]
        return value if conv is None else (value[0], conv.to_wire(value[1]))

    def from_wire(value: Any) -> tuple[Any, Any]:
        index = index_of(value)
        if index is None:
            raise DecodeError(f"a OneOf sample must be (index below {size}, sample)")
        conv = parts[index]
        return (value[0], value[1] if conv is None else conv.from_wire(value[1]))

    return ValueConverter(to_wire, from_wire)


# -- user-defined spaces ---------------------------------------------------------


def _user(entry: SpaceCodec) -> ValueConverter | None:
    """A registered space's own sample converters; a missing one is the identity."""
    user_to, user_from = entry.sample_to_wire, entry.sample_from_wire
    if user_to is None and user_from is None:
        return None
    name = entry.name

    def to_wire(value: Any) -> Any:
        if user_to is None:
            return value
        try:
            return user_to(value)
        except Exception as exc:
            raise EncodeError(f"sample_to_wire of space {name!r} failed: {type(exc).__name__}: {_cut(exc)}") from None

    def from_wire(value: Any) -> Any:
        if user_from is None:
            return value
        try:
            return user_from(value)
        except Exception as exc:  # the peer's value, the user's checks: a malformed sample
            raise DecodeError(
                f"sample_from_wire of space {name!r} refused a sample: {type(exc).__name__}: {_cut(exc)}"
            ) from None

    return ValueConverter(to_wire, from_wire)


def convert_final_obs(infos: Any, convert: Convert) -> Any:
    """``convert`` applied to each env's ``final_obs`` in a vector env's info: in
    Gymnasium's batched layout (an object array, ``None`` for envs that did not
    end) or as one info map per env. Infos without it are returned as they are."""
    if isinstance(infos, dict):
        final = infos.get("final_obs")
        if isinstance(final, np.ndarray) and final.dtype == object:
            out = np.empty(final.shape, dtype=object)
            for i, obs in enumerate(final.reshape(-1)):
                out.reshape(-1)[i] = None if obs is None else convert(obs)
            infos = {**infos, "final_obs": out}
        return infos
    if isinstance(infos, list):
        return [
            {**info, "final_obs": convert(info["final_obs"])} if isinstance(info, dict) and "final_obs" in info else info
            for info in infos
        ]
    return infos

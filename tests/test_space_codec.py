"""The space codec for Graph and user-defined spaces, and the sample converters
(``protocol/space_values.py``): round trips equal in value and type, batches in
Gymnasium's layout, the registry of user spaces, and hostile descriptions and
samples ending as coded errors within bounds. Pure: no processes, no sockets."""

from __future__ import annotations

import sys
import textwrap
import tracemalloc
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.spaces.graph import GraphInstance
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remoterl_ray.protocol import codec
from remoterl_ray.protocol.errors import ErrorCode, ProtocolError
from remoterl_ray.protocol.limits import MAX_SPACE_DEPTH
from remoterl_ray.protocol.space_values import (
    ValueConverter,
    batch_converter,
    sample_converter,
)
from remoterl_ray.protocol.spaces import (
    SpaceCodecError,
    register_space,
    registered_codec,
    space_bytes,
    space_from_wire,
    space_to_wire,
    unregister_space,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

BOX3 = spaces.Box(-1.0, 1.0, (3,), np.float32)
GRAPH_BOX_DISCRETE = spaces.Graph(node_space=BOX3, edge_space=spaces.Discrete(3))
GRAPH_DISCRETE_NONE = spaces.Graph(node_space=spaces.Discrete(4, start=-1), edge_space=None)
GRAPH_BOX_BOX = spaces.Graph(
    node_space=spaces.Box(0, 255, (2, 2), np.uint8), edge_space=spaces.Box(-np.inf, np.inf, (2,), np.float64)
)

GRAPH_SPACES = [
    GRAPH_BOX_DISCRETE,
    GRAPH_DISCRETE_NONE,
    GRAPH_BOX_BOX,
    spaces.Tuple((GRAPH_BOX_DISCRETE, spaces.Discrete(2))),
    spaces.Dict({"g": GRAPH_DISCRETE_NONE, "x": BOX3}),
    spaces.Sequence(GRAPH_BOX_DISCRETE),
    spaces.Sequence(GRAPH_BOX_BOX, stack=True),
    spaces.OneOf((spaces.Discrete(3), GRAPH_BOX_DISCRETE)),
    spaces.Dict(
        {
            "pair": spaces.Tuple((GRAPH_DISCRETE_NONE, spaces.Text(4))),
            "history": spaces.Sequence(spaces.Dict({"g": GRAPH_BOX_BOX, "n": spaces.Discrete(2)}), stack=True),
            "either": spaces.OneOf((GRAPH_BOX_BOX, spaces.Sequence(GRAPH_DISCRETE_NONE))),
        }
    ),
]

PLAIN_SPACES = [
    spaces.Box(-np.inf, np.inf, (2,), np.float64),
    spaces.Box(0, 255, (4, 4, 3), np.uint8),
    spaces.Discrete(5, start=-2),
    spaces.MultiDiscrete([[2, 3], [4, 5]], start=[[0, 1], [-1, 2]]),
    spaces.MultiBinary([2, 3]),
    spaces.Text(max_length=6, min_length=1, charset="xyz"),
    spaces.Dict({"a": BOX3, "b": spaces.Tuple((spaces.Discrete(2), spaces.Text(3)))}),
    spaces.Sequence(spaces.Discrete(4)),
    spaces.Sequence(BOX3, stack=True),
    spaces.OneOf((spaces.Discrete(2), BOX3)),
]


def wire(value: Any) -> Any:
    return codec.unpackb(codec.packb(value))


def through(conv: ValueConverter | None, value: Any) -> Any:
    """What the far side gets: convert, encode, decode, convert back."""
    if conv is None:
        return wire(value)
    return conv.from_wire(wire(conv.to_wire(value)))


def assert_same(a: Any, b: Any) -> None:
    """Equal in value *and* type, all the way down (dtype and shape for arrays)."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and a == b
    else:
        assert a == b


def graphs_in(value: Any) -> int:
    if isinstance(value, GraphInstance):
        return 1
    if isinstance(value, dict):
        return sum(graphs_in(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(graphs_in(v) for v in value)
    return 0


# -- round trips of spaces ---------------------------------------------------------


@pytest.mark.parametrize("space", GRAPH_SPACES + PLAIN_SPACES, ids=repr)
def test_every_space_roundtrips_equal(space):
    rebuilt = space_from_wire(wire(space_to_wire(space)))
    assert rebuilt == space and type(rebuilt) is type(space)
    assert space_to_wire(rebuilt).keys() == space_to_wire(space).keys()
    assert space_bytes(rebuilt) == space_bytes(space)


def test_graph_space_keeps_its_parts_exactly():
    rebuilt = space_from_wire(wire(space_to_wire(GRAPH_BOX_BOX)))
    assert rebuilt.node_space.dtype == np.uint8 and rebuilt.node_space.shape == (2, 2)
    assert np.isinf(rebuilt.edge_space.low).all() and rebuilt.edge_space.dtype == np.float64
    assert space_from_wire(wire(space_to_wire(GRAPH_DISCRETE_NONE))).edge_space is None
    assert space_from_wire(wire(space_to_wire(GRAPH_DISCRETE_NONE))).node_space.start == -1
    assert space_bytes(GRAPH_BOX_BOX) == space_bytes(GRAPH_BOX_BOX.node_space) + space_bytes(GRAPH_BOX_BOX.edge_space)


# -- samples -----------------------------------------------------------------------


@pytest.mark.parametrize("space", GRAPH_SPACES, ids=repr)
def test_samples_come_back_equal_in_value_and_type(space):
    conv = sample_converter(space)
    assert conv is not None
    space.seed(7)
    for _ in range(5):
        sample = space.sample()
        back = through(conv, sample)
        assert_same(sample, back)
        # (Gymnasium samples Graph nodes of a Discrete with a start as if it had none: not members)
        assert space.contains(back) == space.contains(sample)


def test_graph_sample_without_conversion_would_come_back_a_plain_tuple():
    GRAPH_BOX_DISCRETE.seed(1)
    sample = GRAPH_BOX_DISCRETE.sample(num_nodes=3, num_edges=2)
    assert type(wire(sample)) is tuple  # why the converter exists
    back = through(sample_converter(GRAPH_BOX_DISCRETE), sample)
    assert type(back) is GraphInstance and back.nodes.dtype == np.float32 and back.edge_links.dtype == np.int32


@pytest.mark.parametrize("space", PLAIN_SPACES, ids=repr)
def test_ordinary_spaces_need_no_converter_at_all(space):
    assert sample_converter(space) is None
    assert batch_converter(space) is None
    assert batch_converter(space, 4) is None
    space.seed(2)
    sample = space.sample()
    assert_same(sample, wire(sample))


def test_ordinary_nested_spaces_need_no_converter():
    from remoterl_testenvs import all_spaces  # tests/support is on sys.path (conftest)

    assert sample_converter(all_spaces()) is None
    assert batch_converter(all_spaces(), 8) is None


# -- batches in Gymnasium's layout -------------------------------------------------


def batched(space: spaces.Space, n: int) -> Any:
    items = [space.sample() for _ in range(n)]
    return items, concatenate(space, items, create_empty_array(space, n))


@pytest.mark.parametrize("space", GRAPH_SPACES, ids=repr)
@pytest.mark.parametrize("n", [1, 3])
def test_batches_come_back_in_gymnasiums_layout(space, n):
    space.seed(11)
    items, batch = batched(space, n)
    conv = batch_converter(space, n)
    back = through(conv, batch)
    assert_same(batch, back)
    assert batch_space(space, n).contains(back) == batch_space(space, n).contains(batch)
    if isinstance(space, (spaces.Dict, spaces.Tuple)):
        for item, again in zip(items, iterate(batch_space(space, n), back)):
            assert_same(item, again)
    else:  # Graph, Sequence, OneOf batch as a tuple of one sample per env
        assert type(back) is tuple and len(back) == n
        for item, again in zip(items, back):
            assert_same(item, again)


def test_graph_batch_is_a_tuple_of_graph_instances():
    GRAPH_BOX_DISCRETE.seed(3)
    _, batch = batched(GRAPH_BOX_DISCRETE, 4)
    assert isinstance(batch_space(GRAPH_BOX_DISCRETE, 4), spaces.Tuple)
    back = through(batch_converter(GRAPH_BOX_DISCRETE), batch)
    assert [type(g) for g in back] == [GraphInstance] * 4


def test_a_batch_of_the_wrong_length_is_refused_when_the_length_is_known():
    GRAPH_DISCRETE_NONE.seed(3)
    _, batch = batched(GRAPH_DISCRETE_NONE, 3)
    with pytest.raises(ProtocolError) as err:
        through(batch_converter(GRAPH_DISCRETE_NONE, 2), batch)
    assert err.value.code is ErrorCode.BAD_PAYLOAD
    assert len(through(batch_converter(GRAPH_DISCRETE_NONE), batch)) == 3


def test_num_envs_must_be_a_count():
    with pytest.raises(ValueError):
        batch_converter(GRAPH_DISCRETE_NONE, -1)


# -- random spaces: descriptions and samples ---------------------------------------

leaf_spaces = st.one_of(
    st.sampled_from([GRAPH_BOX_DISCRETE, GRAPH_DISCRETE_NONE, GRAPH_BOX_BOX, BOX3, spaces.Discrete(3, start=1),
                     spaces.MultiBinary(2), spaces.Text(3), spaces.MultiDiscrete([2, 5])]),
)  # fmt: skip
random_spaces = st.recursive(
    leaf_spaces,
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda subs: spaces.Tuple(subs)),
        st.lists(inner, min_size=1, max_size=3).map(lambda subs: spaces.Dict({f"k{i}": s for i, s in enumerate(subs)})),
        st.lists(inner, min_size=1, max_size=3).map(lambda subs: spaces.OneOf(subs)),
        st.tuples(inner, st.booleans()).map(lambda fs: spaces.Sequence(fs[0], stack=fs[1])),
    ),
    max_leaves=5,
)


def has_graph(space: spaces.Space) -> bool:
    if isinstance(space, spaces.Graph):
        return True
    if isinstance(space, spaces.Dict):
        return any(has_graph(s) for s in space.spaces.values())
    if isinstance(space, (spaces.Tuple, spaces.OneOf)):
        return any(has_graph(s) for s in space.spaces)
    if isinstance(space, spaces.Sequence):
        return has_graph(space.feature_space)
    return False


@SETTINGS
@given(random_spaces, st.integers(0, 2**16), st.integers(1, 3))
def test_random_spaces_roundtrip_with_their_samples_and_batches(space, seed, n):
    assert space_from_wire(wire(space_to_wire(space))) == space
    conv = sample_converter(space)
    assert (conv is not None) == has_graph(space)  # zero cost unless a Graph is inside
    space.seed(seed)
    sample = space.sample()
    assert_same(sample, through(conv, sample))
    _, batch = batched(space, n)
    assert_same(batch, through(batch_converter(space, n), batch))


# -- the registry of user-defined spaces -------------------------------------------


class Token:
    """A sample the payload codec cannot carry at all."""

    def __init__(self, word: str) -> None:
        self.word = word

    def __eq__(self, other: object) -> bool:
        return type(other) is Token and other.word == self.word


class TokenSpace(gym.Space):
    def __init__(self, words: tuple[str, ...], seed: int | None = None) -> None:
        self.words = tuple(words)
        super().__init__(None, None, seed)

    def sample(self, mask: Any = None, probability: Any = None) -> Token:
        return Token(self.words[int(self.np_random.integers(len(self.words)))])

    def contains(self, x: Any) -> bool:
        return isinstance(x, Token) and x.word in self.words

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokenSpace) and other.words == self.words


def token_space_from_wire(value: Any) -> TokenSpace:
    if not isinstance(value, list) or not all(isinstance(w, str) for w in value) or not value:
        raise ValueError("a TokenSpace is a non-empty list of words")
    return TokenSpace(tuple(value))


def token_from_wire(value: Any) -> Token:
    if not isinstance(value, str):
        raise TypeError("a Token is a string")
    return Token(value)


class Wrapped(gym.Space):
    """A user space holding another space: its codec nests the built-in one."""

    def __init__(self, inner: spaces.Space) -> None:
        self.inner = inner
        super().__init__(None, None, None)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Wrapped) and other.inner == self.inner


@pytest.fixture
def token_space():
    """Registered as both sides would (one process stands for both here)."""
    register_space(
        TokenSpace,
        "test.Token",
        lambda space: list(space.words),
        token_space_from_wire,
        sample_to_wire=lambda token: token.word,
        sample_from_wire=token_from_wire,
    )
    yield TokenSpace(("red", "green", "blue"), seed=5)
    unregister_space("test.Token")


@pytest.fixture
def wrapped_space():
    register_space(Wrapped, "test.Wrapped", lambda s: {"inner": space_to_wire(s.inner)},
                   lambda v: Wrapped(space_from_wire(v["inner"])))  # fmt: skip
    yield
    unregister_space("test.Wrapped")


def test_a_registered_space_and_its_samples_roundtrip(token_space):
    rebuilt = space_from_wire(wire(space_to_wire(token_space)))
    assert rebuilt == token_space and type(rebuilt) is TokenSpace
    conv = sample_converter(token_space)
    sample = token_space.sample()
    with pytest.raises(codec.EncodeError):
        codec.packb(sample)  # why sample_to_wire exists
    assert through(conv, sample) == sample
    nested = spaces.Dict({"t": token_space, "g": spaces.Tuple((GRAPH_DISCRETE_NONE, token_space))})
    assert space_from_wire(wire(space_to_wire(nested))) == nested
    nested.seed(4)
    value = nested.sample()
    back = through(sample_converter(nested), value)
    assert back["t"] == value["t"] and back["g"][1] == value["g"][1] and type(back["g"][0]) is GraphInstance
    _, batch = batched(nested, 3)
    back = through(batch_converter(nested, 3), batch)
    assert [type(t) for t in back["t"]] == [Token] * 3 and back["t"] == batch["t"]


def test_a_registered_space_without_sample_converters_costs_nothing(wrapped_space):
    space = Wrapped(BOX3)
    assert space_from_wire(wire(space_to_wire(space))) == space
    assert sample_converter(space) is None and registered_codec(space).name == "test.Wrapped"


def test_an_unregistered_user_space_is_refused_with_directions(token_space):
    class Unknown(gym.Space):
        pass

    with pytest.raises(SpaceCodecError, match="register_space") as err:
        space_to_wire(Unknown())
    assert err.value.code is ErrorCode.UNSUPPORTED
    desc = space_to_wire(token_space)
    unregister_space("test.Token")  # the far side never registered it
    with pytest.raises(SpaceCodecError, match="register_space.*both sides") as err:
        space_from_wire(wire(desc))
    assert err.value.code is ErrorCode.UNSUPPORTED


def test_a_wire_name_never_imports_or_looks_up_code():
    assert "antigravity" not in sys.modules
    for name in ("antigravity", "os:system", "remoterl_testenvs:AllSpacesEnv", "builtins.eval"):
        with pytest.raises(SpaceCodecError, match="not registered"):
            space_from_wire({"type": "Custom", "name": name, "value": []})
    assert "antigravity" not in sys.modules
    for name in (None, 7, "x" * 65, ["a"]):
        with pytest.raises(SpaceCodecError) as err:
            space_from_wire({"type": "Custom", "name": name, "value": []})
        assert err.value.code is ErrorCode.BAD_PAYLOAD


def test_errors_of_a_users_from_wire_become_coded(token_space):
    for value in ([], [3], "red", None):
        with pytest.raises(SpaceCodecError) as err:
            space_from_wire({"type": "Custom", "name": "test.Token", "value": value})
        assert err.value.code is ErrorCode.BAD_PAYLOAD and "from_wire" in err.value.message
    register_space(TokenSpace, "test.Token", list, lambda value: spaces.Discrete(2))  # returns the wrong class
    with pytest.raises(SpaceCodecError, match="not TokenSpace") as err:
        space_from_wire({"type": "Custom", "name": "test.Token", "value": ["a"]})
    assert err.value.code is ErrorCode.BAD_PAYLOAD


def test_errors_of_a_users_sample_converters_become_coded(token_space):
    conv = sample_converter(token_space)
    for value in (3, None, ["red"], b"red"):
        with pytest.raises(ProtocolError) as err:
            conv.from_wire(value)
        assert err.value.code is ErrorCode.BAD_PAYLOAD
    with pytest.raises(codec.EncodeError, match="sample_to_wire"):
        conv.to_wire("not a token")


def test_registration_checks_its_arguments(token_space):
    with pytest.raises(TypeError):
        register_space(int, "test.int", list, list)
    for bad in ("", "has space", "x" * 65, 5):
        with pytest.raises(ValueError):
            register_space(TokenSpace, bad, list, list)
    with pytest.raises(ValueError, match="already registered"):
        register_space(Wrapped, "test.Token", list, list)
    with pytest.raises(TypeError):
        register_space(TokenSpace, "test.Other", list, "not callable")


def test_to_wire_must_give_a_value_the_codec_carries(token_space):
    register_space(TokenSpace, "test.Token", lambda space: object(), token_space_from_wire)
    with pytest.raises(SpaceCodecError, match="cannot carry"):
        space_to_wire(token_space)


def test_a_users_description_is_charged_to_the_budget_before_from_wire_runs():
    calls = []
    register_space(TokenSpace, "test.Charged", lambda s: list(s.words), lambda v: calls.append(v) or TokenSpace(("a",)))
    try:
        desc = {"type": "Custom", "name": "test.Charged", "value": ["w" * 5000]}
        with pytest.raises(SpaceCodecError, match="max_space_bytes") as err:
            space_from_wire(desc, max_bytes=4000)
        assert err.value.code is ErrorCode.BAD_PAYLOAD and calls == []
        assert space_from_wire(desc, max_bytes=100_000) == TokenSpace(("a",))
    finally:
        unregister_space("test.Charged")


def test_nested_user_spaces_share_the_callers_budget_and_depth(wrapped_space):
    big = spaces.Box(0, 1, (1000, 1000), np.float64)  # ~16 MB of bounds
    desc = wire(space_to_wire(Wrapped(big)))
    with pytest.raises(SpaceCodecError, match="max_space_bytes"):
        space_from_wire(desc, max_bytes=1_000_000)
    assert space_from_wire(desc, max_bytes=100_000_000) == Wrapped(big)
    deep: dict[str, Any] = space_to_wire(spaces.Discrete(2))
    for _ in range(MAX_SPACE_DEPTH + 2):
        deep = {"type": "Custom", "name": "test.Wrapped", "value": {"inner": deep}}
    with pytest.raises(SpaceCodecError, match="deeper") as err:
        space_from_wire(deep)
    assert err.value.code is ErrorCode.BAD_PAYLOAD


# -- attacks ------------------------------------------------------------------------


def test_a_graph_that_would_allocate_gigabytes_is_refused_before_allocating():
    huge = {"type": "Box", "low": 0.0, "high": 1.0, "shape": [100_000, 100_000], "dtype": "<f8"}  # 160 GB of bounds
    for desc in (
        {"type": "Graph", "node_space": huge, "edge_space": None},
        {"type": "Graph", "node_space": {"type": "Discrete", "n": 2, "start": 0}, "edge_space": huge},
        {"type": "Tuple", "spaces": [{"type": "Sequence", "stack": True,
                                      "space": {"type": "Graph", "node_space": huge, "edge_space": huge}}]},
    ):  # fmt: skip
        tracemalloc.start()
        try:
            with pytest.raises(SpaceCodecError, match="max_space_bytes") as err:
                space_from_wire(wire(desc))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert err.value.code is ErrorCode.BAD_PAYLOAD and peak < 5_000_000


@pytest.mark.parametrize(
    "desc",
    [
        {"type": "Graph"},
        {"type": "Graph", "node_space": None, "edge_space": None},
        {"type": "Graph", "node_space": {"type": "Dict", "spaces": []}, "edge_space": None},
        {"type": "Graph", "node_space": {"type": "Text", "max_length": 3, "min_length": 0, "charset": "a"}, "edge_space": None},
        {"type": "Graph", "node_space": {"type": "Discrete", "n": 2, "start": 0}, "edge_space": 5},
        {"type": "Graph", "node_space": {"type": "Discrete", "n": 2, "start": 0},
         "edge_space": {"type": "Graph", "node_space": {"type": "Discrete", "n": 2, "start": 0}, "edge_space": None}},
        {"type": "Graph", "node_space": {"type": "Box", "low": 0, "high": 1, "shape": [2], "dtype": "<U3"}, "edge_space": None},
        {"type": "Graph", "node_space": {"type": "Discrete", "n": -3, "start": 0}, "edge_space": None},
    ],
)  # fmt: skip
def test_malformed_graph_descriptions_are_coded_errors(desc):
    with pytest.raises(SpaceCodecError) as err:
        space_from_wire(wire(desc))
    assert err.value.code is ErrorCode.BAD_PAYLOAD


def test_deep_nesting_around_a_graph_is_refused():
    desc: dict[str, Any] = space_to_wire(GRAPH_BOX_DISCRETE)
    for _ in range(MAX_SPACE_DEPTH):
        desc = {"type": "Tuple", "spaces": [desc]}
    with pytest.raises(SpaceCodecError, match="deeper") as err:
        space_from_wire(desc)
    assert err.value.code is ErrorCode.BAD_PAYLOAD
    deep: spaces.Space = GRAPH_BOX_DISCRETE
    for _ in range(MAX_SPACE_DEPTH + 1):
        deep = spaces.Tuple((deep,))
    with pytest.raises(SpaceCodecError, match="deeper"):
        sample_converter(deep)


NODES = np.zeros((3, 3), np.float32)
EDGES = np.array([0, 2], np.int64)
LINKS = np.array([[0, 1], [2, 0]], np.int32)
MALFORMED_GRAPH_SAMPLES = [
    None, 5, "graph", [], (NODES,), (NODES, EDGES), (NODES, EDGES, LINKS, LINKS), {"nodes": NODES},
    ([[0.0, 0.0, 0.0]], None, None),  # nodes a list
    (np.zeros((3, 2), np.float32), None, None),  # feature shape
    (np.zeros(3, np.float32), None, None),  # missing feature dimension
    (np.array(1.0, np.float32), None, None),  # a scalar
    (np.array(["a", "b", "c"]), None, None),  # strings
    (NODES, EDGES, None), (NODES, None, LINKS),  # half the edge fields
    (NODES, EDGES, LINKS.astype(np.float32)), (NODES, EDGES, LINKS[:1]), (NODES, EDGES, np.zeros((2, 3), np.int32)),
    (NODES, EDGES.reshape(2, 1), LINKS), (NODES, [0, 2], LINKS), (NODES, EDGES, LINKS.tolist()),
    (NODES, np.array(["a", "b"]), LINKS),
]  # fmt: skip


@pytest.mark.parametrize("value", MALFORMED_GRAPH_SAMPLES, ids=range(len(MALFORMED_GRAPH_SAMPLES)))
def test_a_malformed_graph_sample_from_the_wire_is_a_coded_error(value):
    single = sample_converter(GRAPH_BOX_DISCRETE)
    in_a_batch = batch_converter(spaces.Dict({"g": GRAPH_BOX_DISCRETE}))  # {"g": (graph, ...)}
    for conv, arriving in ((single, wire(value)), (in_a_batch, {"g": (wire(value),)})):
        with pytest.raises(ProtocolError) as err:
            conv.from_wire(arriving)
        assert err.value.code is ErrorCode.BAD_PAYLOAD


def test_edges_for_a_graph_without_edge_space_are_refused():
    with pytest.raises(ProtocolError, match="no edge space"):
        sample_converter(GRAPH_DISCRETE_NONE).from_wire(wire((np.array([1, 2]), EDGES, LINKS)))


@pytest.mark.parametrize(
    "value",
    [
        None, [], {}, {"pair": None}, {"pair": (1,), "history": (), "either": (0, 1)},
        {"pair": ((np.array([1]), None, None), 0), "history": [], "either": (5, 0)},
        {"pair": ((np.array([1]), None, None), 0), "history": (), "either": (True, 0)},
        {"pair": ((np.array([1]), None, None), 0), "history": (), "either": ("0", 0)},
        {"pair": ((np.array([1]), None, None), 0), "history": (), "either": (1, 0)},
        {"pair": ((np.array([1]), None, None), 0), "history": 7, "either": (0, 0)},
        {"pair": ((np.array([1]), None, None), 0), "history": ((1, 2),), "either": (0, 0)},
    ],
)  # fmt: skip
def test_malformed_nested_samples_are_coded_errors(value):
    space = spaces.Dict(
        {
            "pair": spaces.Tuple((GRAPH_DISCRETE_NONE, spaces.Discrete(2))),
            "history": spaces.Sequence(GRAPH_BOX_DISCRETE),
            "either": spaces.OneOf((spaces.Discrete(3), GRAPH_BOX_DISCRETE)),
        }
    )
    with pytest.raises(ProtocolError) as err:
        sample_converter(space).from_wire(wire(value))
    assert err.value.code is ErrorCode.BAD_PAYLOAD


codec_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False), st.text(max_size=3),
              st.sampled_from([NODES, EDGES, LINKS, np.zeros((0, 3), np.float32), np.zeros((0, 2), np.int64),
                               np.int64(1), np.int64(9), np.array(["x"])])),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.lists(inner, max_size=4).map(tuple),
                            st.dictionaries(st.sampled_from(["g", "s", "o", "x"]), inner, max_size=4)),
    max_leaves=12,
)  # fmt: skip
HOSTILE_TARGET = spaces.Dict(
    {
        "g": GRAPH_BOX_DISCRETE,
        "s": spaces.Sequence(spaces.Tuple((GRAPH_DISCRETE_NONE, spaces.Discrete(2)))),
        "o": spaces.OneOf((GRAPH_BOX_BOX, spaces.Discrete(2), spaces.Sequence(GRAPH_BOX_DISCRETE, stack=True))),
    }
)


def replace_at(value: Any, path: list[int], replacement: Any) -> Any:
    """``value`` with the part that ``path`` leads to (child indices, modulo) replaced."""
    if not path or not isinstance(value, (tuple, list, dict)) or not value:
        return replacement
    if isinstance(value, dict):
        key = list(value)[path[0] % len(value)]
        return {**value, key: replace_at(value[key], path[1:], replacement)}
    items = list(value)
    i = path[0] % len(items)
    items[i] = replace_at(items[i], path[1:], replacement)
    return tuple(items) if isinstance(value, tuple) else items


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**16), st.lists(st.integers(0, 7), max_size=7), codec_values)
def test_any_value_from_the_wire_is_a_sample_or_a_coded_error(seed, path, replacement):
    """Valid samples and batches with one part, at any depth, replaced by any value."""
    HOSTILE_TARGET.seed(seed)
    _, batch = batched(HOSTILE_TARGET, 2)
    for conv, valid in ((sample_converter(HOSTILE_TARGET), HOSTILE_TARGET.sample()),
                        (batch_converter(HOSTILE_TARGET, 2), batch)):  # fmt: skip
        try:
            conv.from_wire(wire(replace_at(valid, path, replacement)))
        except ProtocolError as exc:
            assert exc.code is ErrorCode.BAD_PAYLOAD


# -- the conformance envs ----------------------------------------------------------


@pytest.mark.parametrize("env_id", ["Conformance/Graph-v0", "Conformance/NestedGraph-v0", "Conformance/CustomSpace-v0"])
def test_conformance_envs_are_deterministic_and_travel(env_id):
    import conformance_envs  # noqa: F401  (registers the ids and the PoseSpace codec)

    def episode(seed: int) -> list[Any]:
        env = gym.make(env_id)
        env.action_space.seed(seed)
        conv = sample_converter(env.observation_space)
        obs, _ = env.reset(seed=seed)
        seen = [through(conv, obs)]
        done = False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            seen.append((through(conv, obs), reward))
            assert env.observation_space.contains(seen[-1][0])
            done = terminated or truncated
        env.close()
        return seen

    first = episode(3)
    assert sample_converter(gym.make(env_id).observation_space) is not None
    for a, b in zip(first, episode(3)):
        assert_same(a, b)
    spec_space = gym.make(env_id).observation_space
    assert space_from_wire(wire(space_to_wire(spec_space))) == spec_space


def test_conformance_envs_vectorise_and_their_batches_travel():
    import conformance_envs  # noqa: F401

    for env_id in ("Conformance/Graph-v0", "Conformance/NestedGraph-v0", "Conformance/CustomSpace-v0"):
        envs = gym.make_vec(env_id, num_envs=3, vectorization_mode="sync")
        obs, _ = envs.reset(seed=0)
        back = through(batch_converter(envs.single_observation_space, 3), obs)
        assert_same(obs, back)
        assert envs.observation_space.contains(back)
        envs.close()
    custom = gym.make("Conformance/CustomSpace-v0", custom_action=True)
    custom.reset(seed=1)
    action = custom.action_space.sample()
    assert through(sample_converter(custom.action_space), action) == action


def test_the_register_space_example_in_the_api_docs_runs_as_written():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "register_space(" in b]
    assert len(blocks) == 1
    namespace: dict = {}
    exec(compile(textwrap.dedent(blocks[0]), "docs/api.md", "exec"), namespace)
    try:
        space = namespace["Heading"](45)
        assert space_from_wire(space_to_wire(space)).step == 45
    finally:
        unregister_space("my_pkg.Heading")

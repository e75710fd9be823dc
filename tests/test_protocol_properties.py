"""Property-based tests of the protocol layer: whatever bytes arrive, decoding
returns a value or raises the protocol's coded error, within its limits; and
every value that may travel comes back equal, type for type."""

from __future__ import annotations


import msgpack
import numpy as np
import pytest
from gymnasium import spaces
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from remoterl_ray.protocol import codec
from remoterl_ray.protocol.errors import ErrorCode, ProtocolError
from remoterl_ray.protocol.frames import HEADER_SIZE, Kind, Op, pack, unpack_header
from remoterl_ray.protocol.limits import MAX_HELLO_BYTES, DecodeLimits
from remoterl_ray.protocol.messages import Hello, encode_control, parse_hello
from remoterl_ray.protocol.scan import check_structure
from remoterl_ray.protocol.spaces import space_bytes, space_from_wire

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DTYPES = st.sampled_from(["<f4", "<f8", "<f2", "<i8", "<i4", "|i1", "<u2", "|u1", "|b1", "<c8", "<U3", "|S2"])
arrays = DTYPES.flatmap(
    lambda dt: hnp.arrays(np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=3, max_side=4), elements=None)
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False), st.text(max_size=8),
    st.binary(max_size=8), arrays.map(lambda a: a[()] if a.ndim == 0 else a),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=4), st.integers(-5, 5)), inner, max_size=4),
    ),
    max_leaves=20,
)


def same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and (a == b or (a != a and b != b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


@SETTINGS
@given(values)
def test_every_value_that_travels_comes_back_the_same(value):
    assert same(codec.unpackb(codec.packb(value)), value)


@SETTINGS
@given(st.binary(max_size=512))
def test_any_bytes_decode_or_raise_the_coded_error(data):
    try:
        codec.unpackb(data)
    except codec.DecodeError as exc:
        assert exc.code is ErrorCode.BAD_PAYLOAD


@SETTINGS
@given(values, st.data())
def test_mutated_payloads_decode_or_raise_the_coded_error(value, data):
    payload = bytearray(codec.packb(value))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] = data.draw(st.integers(0, 255))
    try:
        codec.unpackb(bytes(payload))
    except codec.DecodeError as exc:
        assert exc.code is ErrorCode.BAD_PAYLOAD


def depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.dtype == object):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def count(value) -> int:
    """Values as the limit counts them: the payload itself, then every item of every container."""

    def items(v) -> int:
        if isinstance(v, dict):
            return 2 * len(v) + sum(items(x) for x in v.values())
        if isinstance(v, (list, tuple)):  # a tuple's marker is an item too
            return len(v) + isinstance(v, tuple) + sum(items(x) for x in v)
        return 0

    return 1 + items(value)


@SETTINGS
@given(st.recursive(st.integers(0, 9), lambda inner: st.one_of(st.lists(inner, max_size=3), st.lists(inner, max_size=3).map(tuple)), max_leaves=40),
       st.integers(1, 6), st.integers(1, 60))  # fmt: skip
def test_the_limits_are_exactly_what_is_refused(value, max_depth, max_objects):
    limits = DecodeLimits(max_depth=max_depth, max_objects=max_objects)
    payload = codec.packb(value)
    fits = depth(value) <= max_depth and count(value) <= max_objects
    try:
        decoded = codec.unpackb(payload, limits)
    except codec.DecodeError:
        assert not fits
    else:
        assert fits and same(decoded, value)


@pytest.mark.parametrize("depth_", [64, 65, 1000, 100_000])
def test_deep_nesting_is_refused_before_decoding(depth_):
    flat = b"\x91" * depth_ + b"\xc0"  # arrays in arrays
    tuples = (b"\x92\xc7\x00\x03" * depth_) + b"\xc0"  # tuples in tuples (the version 2 layout)
    for payload in (flat, tuples):
        if depth_ <= 64:
            assert depth(codec.unpackb(payload)) == depth_
        else:
            with pytest.raises(codec.DecodeError, match="deeper"):
                codec.unpackb(payload)


def test_counts_are_refused_before_anything_is_allocated():
    with pytest.raises(codec.DecodeError, match="more than"):
        codec.unpackb(b"\xdd\xff\xff\xff\xff")  # "4 billion items follow"
    with pytest.raises(codec.DecodeError, match="more than"):
        codec.unpackb(b"\xdc\xff\xff" + b"\x80" * 65535, DecodeLimits(max_objects=1000))
    with pytest.raises(codec.DecodeError, match="open an array"):
        codec.unpackb(msgpack.packb({"k": msgpack.ExtType(3, b"")}))  # a marker anywhere but first


@SETTINGS
@given(st.binary(min_size=0, max_size=64))
def test_any_header_parses_to_known_fields_or_raises(data):
    try:
        header = unpack_header(data)
    except ProtocolError as exc:
        assert exc.code is ErrorCode.BAD_FRAME
    else:
        assert header.kind in set(Kind) and header.op in set(Op) and len(data) >= HEADER_SIZE


@SETTINGS
@given(st.sampled_from(list(Kind)), st.sampled_from(list(Op)), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_headers_roundtrip(kind, op, channel, seq):
    assert tuple(unpack_header(pack(kind, op, channel, seq, b"p"))) == (kind, op, channel, seq)


hellos = st.fixed_dictionaries(
    {"op": st.just("hello"), "role": st.sampled_from(["trainer", "simulator", "king", 3])},
    optional={
        "protocol": st.one_of(st.integers(-5, 5), st.text(max_size=3)),
        "api_key": st.one_of(st.none(), st.text(max_size=600)),
        "name": st.text(max_size=300),
        "capabilities": st.lists(st.text(max_size=40), max_size=20),
        "max_envs": st.integers(-(2**40), 2**40),
        "extra": values,
    },
)


@SETTINGS
@given(hellos)
def test_any_hello_is_a_bounded_hello_or_bad_hello(message):
    payload = codec.packb(message)
    try:
        hello = parse_hello(payload)
    except ProtocolError as exc:
        assert exc.code is ErrorCode.BAD_HELLO
    else:
        assert len(payload) <= MAX_HELLO_BYTES
        assert hello.role in ("trainer", "simulator") and 1 <= hello.max_envs <= 65536
        assert len(hello.capabilities) <= 16 and all(len(c) <= 32 for c in hello.capabilities)
        assert hello.api_key is None or len(hello.api_key) <= 512


def test_a_hello_larger_than_the_limit_is_refused_unread():
    payload = encode_control(Hello(role="trainer", api_key="k", name="n")) + b"\x00" * MAX_HELLO_BYTES
    with pytest.raises(ProtocolError, match="exceeds"):
        parse_hello(payload)


space_descriptions = st.recursive(
    st.one_of(
        st.fixed_dictionaries({"type": st.just("Box"), "low": st.one_of(st.floats(), st.integers()),
                               "high": st.one_of(st.floats(), st.integers()),
                               "shape": st.lists(st.integers(-2, 3000), max_size=4),
                               "dtype": st.sampled_from(["<f4", "<f8", "|u1", "|O", "<U2", "x"])}),
        st.fixed_dictionaries({"type": st.just("Discrete"), "n": st.integers(-2, 2**70), "start": st.integers(-3, 3)}),
        st.fixed_dictionaries({"type": st.just("MultiBinary"), "n": st.one_of(st.integers(-1, 10**9), st.lists(st.integers(0, 5000), max_size=3))}),
        st.fixed_dictionaries({"type": st.just("Text"), "max_length": st.integers(-1, 10**12), "min_length": st.integers(0, 3),
                               "charset": st.text(max_size=5)}),
    ),
    lambda inner: st.one_of(
        st.fixed_dictionaries({"type": st.just("Tuple"), "spaces": st.lists(inner, max_size=3)}),
        st.fixed_dictionaries({"type": st.just("Dict"), "spaces": st.lists(st.tuples(st.text(max_size=3), inner).map(list), max_size=3)}),
        st.fixed_dictionaries({"type": st.just("Sequence"), "space": inner, "stack": st.booleans()}),
    ),
    max_leaves=8,
)  # fmt: skip


@SETTINGS
@given(space_descriptions)
def test_any_space_description_builds_a_bounded_space_or_a_coded_error(desc):
    try:
        space = space_from_wire(codec.unpackb(codec.packb(desc)), max_bytes=10_000_000)
    except ProtocolError as exc:
        assert exc.code in (ErrorCode.BAD_PAYLOAD, ErrorCode.UNSUPPORTED)
    else:
        assert space_bytes(space) <= 10_000_000
        numeric = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete)
        assert all(leaf.dtype.kind in "biuf" for leaf in _leaves(space) if isinstance(leaf, numeric))


def _leaves(space):
    if isinstance(space, spaces.Tuple):
        return [leaf for sub in space.spaces for leaf in _leaves(sub)]
    if isinstance(space, spaces.Dict):
        return [leaf for sub in space.spaces.values() for leaf in _leaves(sub)]
    if isinstance(space, spaces.Sequence):
        return _leaves(space.feature_space)
    return [space]


def test_check_structure_accepts_what_the_codec_makes():
    value = {"obs": (np.zeros(3), [1, (2,)]), "final": np.array([None, np.ones(2)], dtype=object)}
    check_structure(codec.packb(value), DecodeLimits())

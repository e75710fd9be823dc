"""Layer 1 in isolation: codec, spaces, frames, errors. No I/O."""

from __future__ import annotations

import struct
from collections import defaultdict

import msgpack
import numpy as np
import pytest
from gymnasium import spaces
from remoterl_testenvs import all_spaces

from remoterl_ray.protocol import codec
from remoterl_ray.protocol.compression import Codec, Compression, Scope
from remoterl_ray.protocol.errors import (
    AuthenticationError,
    ErrorCode,
    InvalidActionError,
    ProtocolError,
    RemoteEnvError,
    RemoteRLError,
    SimulatorLostError,
    error_from_wire,
)
from remoterl_ray.protocol.frames import HEADER_SIZE, Kind, Op, pack, unpack_header
from remoterl_ray.protocol.messages import Hello, parse_control, encode_control
from remoterl_ray.protocol.spaces import SpaceCodecError, space_from_wire, space_to_wire


def roundtrip(value):
    return codec.unpackb(codec.packb(value))


def assert_same(a, b):
    """Equal in value *and* type, recursively (numpy dtypes included)."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        if a.dtype == object:
            for x, y in zip(a.reshape(-1), b.reshape(-1)):
                assert_same(x, y)
        else:
            np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b)
    else:
        assert a == b
        if isinstance(a, np.generic):
            assert a.dtype == b.dtype


@pytest.mark.parametrize(
    "value",
    [
        None, True, 0, -(2**63), 2**64 - 1, 1.5, float("inf"), "text", b"\x00bytes",
        [1, "a", None], (1, (2, 3), []), {"a": 1, 2: "int key"},
        np.float32(1.25), np.int8(-3), np.uint64(2**64 - 1), np.bool_(True), np.float16(0.5),
        np.arange(12, dtype=np.float32).reshape(3, 4), np.array([[True, False]]),
        np.array([-np.inf, np.inf, np.nan]), np.array([], dtype=np.int64).reshape(0, 3),
        np.array(["ab", "c"]), np.array(7, dtype=np.int16), np.zeros((2, 3), dtype=np.complex64),
        np.array([None, np.zeros(2), {"k": 1}], dtype=object),
        {"final_obs": np.array([None, np.ones(4, np.float32)], dtype=object), "_final_obs": np.array([False, True])},
    ],
    ids=repr,
)
def test_codec_roundtrips_exactly(value):
    assert_same(value, roundtrip(value))


def test_codec_array_of_non_contiguous_view_is_copied_in_order():
    arr = np.arange(24).reshape(4, 6)[:, ::2]
    assert_same(arr, roundtrip(arr))
    decoded = roundtrip(arr)
    decoded[0, 0] = 99  # decoded arrays are writable, like a local env's
    assert decoded[0, 0] == 99


@pytest.mark.parametrize("value", [object(), {1, 2}, lambda: 1, np.array([1 + 0j]).view([("a", "f8"), ("b", "f8")])])
def test_codec_refuses_arbitrary_objects(value):
    with pytest.raises(codec.EncodeError):
        codec.packb(value)


def _ext(code, data):
    return msgpack.packb(msgpack.ExtType(code, data))


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1",  # never-used msgpack byte
        b"\x92\x01",  # truncated array
        _ext(99, b"whatever"),  # unknown extension
        _ext(codec.EXT_NDARRAY, b"\x03|O8\x01" + struct.pack("<I", 1) + b"\x00" * 8),  # object dtype
        _ext(codec.EXT_NDARRAY, b"\x03<f4\x01" + struct.pack("<I", 10) + b"\x00" * 8),  # short data
        _ext(codec.EXT_NDARRAY, b"\x09not-dtype\x00"),
        _ext(codec.EXT_NPSCALAR, b"\x03<f8\x00" + b"\x00" * 3),
        _ext(codec.EXT_TUPLE, b"\x01"),
    ],
)
def test_codec_rejects_malformed_payloads_with_a_coded_error(payload):
    with pytest.raises(codec.DecodeError) as info:
        codec.unpackb(payload)
    assert info.value.code is ErrorCode.BAD_PAYLOAD


# -- ext 6: defaultdicts -------------------------------------------------------------------------


@pytest.mark.parametrize("factory", [*codec.DEFAULT_FACTORIES, None])
def test_a_defaultdict_roundtrips_with_its_factory(factory):
    value = defaultdict(factory, {"a": np.float64(1.5), 2: defaultdict(int, {"x": 1})})
    back = roundtrip(value)
    assert type(back) is defaultdict and back.default_factory is factory
    assert_same(dict(value), dict(back))
    assert type(back[2]) is defaultdict and back[2].default_factory is int


def test_a_defaultdict_whose_factory_is_code_travels_as_a_plain_map():
    back = roundtrip(defaultdict(lambda: 7, {"k": 1}))
    assert type(back) is dict and back == {"k": 1}


def test_plain_maps_send_every_defaultdict_as_a_map_for_a_peer_without_ext_6():
    value = [defaultdict(int, {"a": 1}), {"nested": defaultdict(list, {"b": [1]})}]
    for compression in (None, Compression(Codec.LZ4, Scope.ALL)):
        back = codec.unpackb(codec.packb(value, compression, plain_maps=True))
        assert type(back[0]) is dict and type(back[1]["nested"]) is dict and back == [{"a": 1}, {"nested": {"b": [1]}}]
        assert b"\xd4\x06" not in codec.packb(value, compression, plain_maps=True)


def _marked(index_byte: bytes, *items: object) -> bytes:
    return msgpack.packb([msgpack.ExtType(codec.EXT_DEFAULTDICT, index_byte), *items])


@pytest.mark.parametrize(
    "payload",
    [
        _marked(bytes([8]), {}),  # a factory index past the builtin types
        _marked(bytes([254]), {}),
        _marked(b"", {}),  # no factory byte
        _marked(b"\x00\x00", {}),  # two
        _marked(b"\x00"),  # no map after the marker
        _marked(b"\x00", {}, {}),  # two maps
        _marked(b"\x00", [1, 2]),  # a list, not a map
        msgpack.packb([1, msgpack.ExtType(codec.EXT_DEFAULTDICT, b"\x00"), {}]),  # the marker not at the head
        msgpack.packb({"k": msgpack.ExtType(codec.EXT_DEFAULTDICT, b"\x00")}),  # as a map value
        msgpack.packb(msgpack.ExtType(codec.EXT_DEFAULTDICT, b"\x00")),  # alone
    ],
)
def test_a_malformed_defaultdict_is_a_coded_error(payload):
    with pytest.raises(codec.DecodeError) as info:
        codec.unpackb(payload)
    assert info.value.code is ErrorCode.BAD_PAYLOAD


def test_defaultdicts_nested_past_the_depth_limit_are_refused_before_anything_is_built():
    value: object = {}
    for _ in range(100):
        value = [msgpack.ExtType(codec.EXT_DEFAULTDICT, b"\x00"), {"d": value}]
    with pytest.raises(codec.DecodeError, match="deeper") as info:
        codec.unpackb(msgpack.packb(value))
    assert info.value.code is ErrorCode.BAD_PAYLOAD


SPACES = [
    spaces.Box(-np.inf, np.inf, (3,), np.float64),
    spaces.Box(low=np.array([0, -np.inf], np.float32), high=np.array([np.inf, 1], np.float32)),
    spaces.Box(0, 255, (84, 84, 3), np.uint8),
    spaces.Box(-3, 7, (2, 2), np.int64),
    spaces.Box(np.array([0.0, 1.0], np.float16), np.array([1.0, 2.0], np.float16), dtype=np.float16),
    spaces.Discrete(5),
    spaces.Discrete(3, start=-7),
    spaces.MultiDiscrete([[2, 3], [4, 5]], start=[[0, 1], [-1, 2]]),
    spaces.MultiDiscrete([3, 3], dtype=np.int32),
    spaces.MultiBinary(5),
    spaces.MultiBinary([2, 4]),
    spaces.Text(5),
    spaces.Text(max_length=8, min_length=2, charset="ba9"),
    spaces.Tuple((spaces.Discrete(2), spaces.Text(3))),
    spaces.Sequence(spaces.Box(0, 1, (2,)), stack=True),
    spaces.OneOf((spaces.Discrete(2), spaces.MultiBinary(3))),
    all_spaces(),
    spaces.Dict({"z": spaces.Discrete(2), "a": spaces.Dict({"y": all_spaces(), "b": spaces.Discrete(3)})}),
]


@pytest.mark.parametrize("space", SPACES, ids=repr)
def test_every_space_roundtrips_losslessly(space):
    rebuilt = space_from_wire(roundtrip(space_to_wire(space)))
    assert rebuilt == space
    assert type(rebuilt) is type(space)
    if isinstance(space, spaces.Dict):
        assert list(rebuilt.spaces) == list(space.spaces)  # key order kept
    if isinstance(space, spaces.Text):
        assert rebuilt.character_list == space.character_list  # sampling order kept
    space.seed(3)
    sample = space.sample()
    assert rebuilt.contains(roundtrip(sample))


def test_box_bounds_and_dtype_survive_exactly():
    box = spaces.Box(low=np.array([-np.inf, 0], np.float32), high=np.array([1.5, np.inf], np.float32))
    rebuilt = space_from_wire(roundtrip(space_to_wire(box)))
    assert rebuilt.dtype == np.float32
    np.testing.assert_array_equal(rebuilt.low, box.low)
    np.testing.assert_array_equal(rebuilt.high, box.high)
    assert rebuilt.bounded_below.tolist() == [False, True]


@pytest.mark.parametrize("desc", [None, {}, {"type": "Nope"}, {"type": "Box", "low": 0}, {"type": "Discrete", "n": "x", "start": 0}])
def test_malformed_space_descriptions_raise_a_coded_error(desc):
    with pytest.raises(SpaceCodecError):
        space_from_wire(desc)


def test_an_unregistered_user_space_is_refused_clearly():
    class Unregistered(spaces.Space):
        pass

    with pytest.raises(SpaceCodecError, match="register_space"):
        space_to_wire(Unregistered())


def test_header_roundtrip_and_errors():
    frame = pack(Kind.REQUEST, Op.STEP, 7, 2**32 - 2, b"xyz")
    assert len(frame) == HEADER_SIZE + 3
    assert tuple(unpack_header(frame)) == (Kind.REQUEST, Op.STEP, 7, 2**32 - 2)
    with pytest.raises(ProtocolError, match="shorter"):
        unpack_header(frame[:5])
    with pytest.raises(ProtocolError, match="kind"):
        unpack_header(b"\x09" + frame[1:])
    with pytest.raises(ProtocolError, match="op"):
        unpack_header(frame[:1] + b"\xee" + frame[2:])


def test_errors_map_back_to_typed_exceptions():
    err = error_from_wire({"code": "invalid_action", "message": "no", "remote_type": "ValueError"})
    assert isinstance(err, InvalidActionError) and isinstance(err, RuntimeError)
    assert err.remote_type == "ValueError" and "no" in str(err)
    assert isinstance(error_from_wire({"code": "auth_failed", "message": "x"}), AuthenticationError)
    assert isinstance(error_from_wire({"code": "simulator_gone", "message": "x"}), SimulatorLostError)
    assert isinstance(error_from_wire({"code": "brand_new_code", "message": "x"}), RemoteEnvError)
    assert isinstance(error_from_wire("garbage"), ProtocolError)
    original = RemoteRLError("boom", code=ErrorCode.ENV_ERROR, remote_type="KeyError")
    again = error_from_wire(roundtrip(original.to_wire()))
    assert (again.code, again.message, again.remote_type) == (original.code, original.message, original.remote_type)


def test_control_messages_validate():
    hello = Hello(role="trainer", api_key="k")
    assert parse_control(encode_control(hello)) == hello
    with pytest.raises(ProtocolError) as info:
        parse_control(codec.packb({"op": "hello", "role": "king"}))
    assert info.value.code is ErrorCode.BAD_PAYLOAD
    with pytest.raises(ProtocolError):
        parse_control(codec.packb({"op": "no-such-op"}))
    with pytest.raises(ProtocolError):
        parse_control(b"\xc1")

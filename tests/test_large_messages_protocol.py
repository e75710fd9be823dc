"""Large messages without sockets: chunks cut and put back together within bounds,
compressed arrays decoded within their budget, and compression agreed at make.

Each attack (an announced size past the limit, chunks that do not add up, a
compressed array that expands past what it states) is refused with a coded
error before the receiver keeps or allocates what was announced.
"""

from __future__ import annotations

import gymnasium as gym
import lz4.block
import numpy as np
import pytest
import zstandard

from remoterl_ray.protocol import chunks, codec, compression
from remoterl_ray.protocol.chunks import ChunkError, Reassembly
from remoterl_ray.protocol.client_protocol import ClientProtocol, Dropped, Request, Unreadable
from remoterl_ray.protocol.compression import Codec, Compression, Scope, negotiate
from remoterl_ray.protocol.errors import ErrorCode, ProtocolError
from remoterl_ray.protocol.frames import HEADER_SIZE, MORE, Kind, Op, pack, unpack_header
from remoterl_ray.protocol.limits import MIN_MESSAGE, MIN_PACKED_CHARGE, DecodeLimits
from remoterl_ray.protocol.messages import (
    CAP_CHUNKS,
    Detach,
    Hello,
    Paused,
    Welcome,
    control_frame,
    parse_hello,
    parse_peer_control,
)
from remoterl_ray.protocol.relay_protocol import Forward, Refuse, RelayPeerProtocol
from remoterl_ray.protocol.scan import EXT_PACKED

MAX_FRAME = 1024
MAX_MESSAGE = 1 << 20


def greeted(role: str = "trainer", *, chunking: bool = True, max_message: int = MAX_MESSAGE) -> ClientProtocol:
    protocol = ClientProtocol(Hello(role=role, api_key="k"), max_message=max_message)
    capabilities = [CAP_CHUNKS] if chunking else []
    welcome = Welcome(peer_id="p", workspace="w", simulators=1, max_frame=MAX_FRAME, capabilities=capabilities)
    protocol.receive_welcome(control_frame(welcome))
    return protocol


# -- chunks ----------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, MAX_FRAME - 1, MAX_FRAME, MAX_FRAME + 1, 2 * MAX_FRAME - 8, 5 * MAX_FRAME + 3])
def test_a_message_of_any_size_comes_back_whole(size):
    payload = np.random.default_rng(size).bytes(size)
    frames = chunks.split(Kind.RESPONSE, Op.STEP, 3, 9, payload, MAX_FRAME)
    assert all(len(f) - HEADER_SIZE <= MAX_FRAME for f in frames)
    assert len(frames) == (1 if size <= MAX_FRAME else -(-(size + 8) // MAX_FRAME))
    assert [unpack_header(f).op for f in frames] == [Op.STEP | MORE] * (len(frames) - 1) + [Op.STEP]
    reassembly = Reassembly(MAX_MESSAGE, MAX_MESSAGE, max_frame=16)
    outs = []
    for frame in frames:
        header = unpack_header(frame)
        outs.append(
            reassembly.take(
                header.kind, header.op & ~MORE, bool(header.op & MORE), 3, 9, memoryview(frame)[HEADER_SIZE:]
            )
        )
    assert all(out is None for out in outs[:-1]) and bytes(outs[-1]) == payload
    assert reassembly.partial == {} and reassembly.pending_bytes == 0


def test_an_announced_size_past_the_limit_is_refused_before_anything_is_kept():
    reassembly = Reassembly(max_message=4096, max_pending=4096, max_frame=16)
    first = chunks.SIZE_PREFIX.pack(1 << 40) + b"x" * 100
    with pytest.raises(ChunkError) as refused:
        reassembly.take(Kind.REQUEST, Op.STEP, True, 5, 77, memoryview(first))
    assert refused.value.code is ErrorCode.MESSAGE_TOO_LARGE and refused.value.seq == 77
    assert reassembly.partial == {} and reassembly.pending_bytes == 0


def test_the_rest_of_a_refused_message_is_passed_over_not_read_as_a_new_one():
    reassembly = Reassembly(max_message=3000, max_pending=3000, max_frame=1024)
    frames = chunks.split(Kind.REQUEST, Op.STEP, 5, 8, b"\xff" * 5000, 1024)  # 5000 bytes: past the limit
    headers = [unpack_header(f) for f in frames]
    with pytest.raises(ChunkError):
        reassembly.take(Kind.REQUEST, Op.STEP, True, 5, 8, memoryview(frames[0])[HEADER_SIZE:])
    for header, frame in zip(headers[1:], frames[1:]):  # their bytes would announce 2**64-1 bytes
        assert (
            reassembly.take(Kind.REQUEST, Op.STEP, bool(header.op & MORE), 5, 8, memoryview(frame)[HEADER_SIZE:])
            is None
        )
    assert reassembly.partial == {} and reassembly.skipping == {}
    assert reassembly.take(Kind.REQUEST, Op.STEP, False, 5, 9, memoryview(b"next")) == b"next"


@pytest.mark.parametrize("announced, sent", [(100, [60, 60]), (100, [60, 20]), (100, [60, 20, 30])])
def test_chunks_that_do_not_add_up_to_the_announced_size_are_refused(announced, sent):
    reassembly = Reassembly(MAX_MESSAGE, MAX_MESSAGE, max_frame=16)
    parts = [chunks.SIZE_PREFIX.pack(announced) + b"a" * sent[0], *(b"b" * n for n in sent[1:])]
    with pytest.raises(ChunkError):
        for i, part in enumerate(parts):
            reassembly.take(Kind.RESPONSE, Op.STEP, i < len(parts) - 1, 1, 2, memoryview(part))
    assert reassembly.partial == {} and reassembly.pending_bytes == 0


def test_another_message_on_the_channel_cuts_the_first_one_off():
    reassembly = Reassembly(MAX_MESSAGE, MAX_MESSAGE, max_frame=16)
    reassembly.take(Kind.RESPONSE, Op.STEP, True, 1, 2, memoryview(chunks.SIZE_PREFIX.pack(100) + b"a" * 10))
    with pytest.raises(ChunkError) as refused:
        reassembly.take(Kind.RESPONSE, Op.STEP, False, 1, 3, memoryview(b"other"))
    assert refused.value.seq == 2 and reassembly.partial == {} and reassembly.pending_bytes == 0
    # Other channels' messages are their own.
    reassembly.take(Kind.RESPONSE, Op.STEP, True, 1, 4, memoryview(chunks.SIZE_PREFIX.pack(20) + b"a" * 10))
    assert reassembly.take(Kind.RESPONSE, Op.STEP, False, 2, 5, memoryview(b"alone")) == b"alone"
    assert bytes(reassembly.take(Kind.RESPONSE, Op.STEP, False, 1, 4, memoryview(b"b" * 10))) == b"a" * 10 + b"b" * 10


def test_unfinished_messages_are_bounded_in_all():
    reassembly = Reassembly(max_message=1000, max_pending=1200, max_frame=16)
    for channel in (1, 2):
        first = memoryview(chunks.SIZE_PREFIX.pack(1000) + b"a" * 700)
        if channel == 1:
            reassembly.take(Kind.REQUEST, Op.STEP, True, channel, channel, first)
        else:
            with pytest.raises(ChunkError) as refused:
                reassembly.take(Kind.REQUEST, Op.STEP, True, channel, channel, first)
            assert refused.value.code is ErrorCode.MESSAGE_TOO_LARGE
    assert list(reassembly.partial) == [1] and reassembly.pending_bytes == 700
    reassembly.drop(1)
    assert reassembly.pending_bytes == 0


def test_a_trainer_puts_together_only_answers_it_waits_for():
    protocol = greeted()
    payload = codec.packb(np.arange(1000, dtype=np.int64))  # ~8 KB: 8 chunks
    # No request is waiting on seq 50: its chunks are dropped as they come, nothing is kept.
    for frame in chunks.split(Kind.RESPONSE, Op.STEP, 4, 50, payload, MAX_FRAME):
        assert protocol.receive(frame) is None
    assert protocol.reassembly.partial == {}
    pending, _ = protocol.request(Kind.REQUEST, Op.STEP, 4, codec.packb(0))
    for frame in chunks.split(Kind.RESPONSE, Op.STEP, 4, pending.seq, payload, MAX_FRAME):
        assert protocol.receive(frame) is None
    np.testing.assert_array_equal(pending.reply.value(), np.arange(1000))
    assert protocol.reassembly.partial == {}


def test_a_trainer_drops_a_half_received_answer_it_stops_waiting_for():
    protocol = greeted()
    pending, _ = protocol.request(Kind.REQUEST, Op.STEP, 4, codec.packb(0))
    frames = chunks.split(Kind.RESPONSE, Op.STEP, 4, pending.seq, b"z" * 5000, MAX_FRAME)
    protocol.receive(frames[0])
    assert protocol.reassembly.pending_bytes > 0
    protocol.forget([pending])  # timed out
    assert protocol.reassembly.partial == {} and protocol.reassembly.pending_bytes == 0


def test_a_trainer_fails_the_request_whose_answer_announces_too_much():
    protocol = greeted(max_message=MAX_MESSAGE)
    pending, _ = protocol.request(Kind.REQUEST, Op.RENDER, 4, codec.packb(None))
    first = pack(Kind.RESPONSE, Op.RENDER | MORE, 4, pending.seq, chunks.SIZE_PREFIX.pack(MAX_MESSAGE + 1))
    assert isinstance(protocol.receive(first), Dropped)
    with pytest.raises(ProtocolError) as refused:
        pending.reply.value()
    assert refused.value.code is ErrorCode.MESSAGE_TOO_LARGE


def test_a_simulator_answers_a_refused_request_and_reads_the_next_one():
    protocol = greeted("simulator", max_message=MAX_MESSAGE)
    first = pack(Kind.REQUEST, Op.STEP | MORE, 6, 21, chunks.SIZE_PREFIX.pack(1 << 50))
    event = protocol.receive(first)
    assert isinstance(event, Unreadable) and (event.op, event.channel, event.seq) == (Op.STEP, 6, 21)
    assert event.error.code is ErrorCode.MESSAGE_TOO_LARGE
    [error] = protocol.answer(event.op, event.channel, event.seq, None, event.error.to_wire())
    assert unpack_header(error) == (Kind.ERROR, Op.STEP, 6, 21)
    # A chunked request within the limit is read whole.
    action = np.ones((40, 40), np.float32)
    events = [protocol.receive(f) for f in chunks.split(Kind.REQUEST, Op.STEP, 6, 22, codec.packb(action), MAX_FRAME)]
    assert events[:-1] == [None] * (len(events) - 1) and isinstance(events[-1], Request)
    np.testing.assert_array_equal(codec.unpackb(events[-1].payload), action)


def test_answers_are_chunked_only_where_the_relay_and_the_trainer_take_chunks():
    big = b"q" * (3 * MAX_FRAME)
    chunked = greeted("simulator").answer(Op.STEP, 1, 2, big, None, limit=MAX_MESSAGE)
    assert len(chunked) == 4 and unpack_header(chunked[-1]) == (Kind.RESPONSE, Op.STEP, 1, 2)
    for protocol, limit, code in [
        (greeted("simulator", chunking=False), MAX_MESSAGE, ErrorCode.FRAME_TOO_LARGE),  # an old relay
        (greeted("simulator"), 0, ErrorCode.FRAME_TOO_LARGE),  # an old trainer
        (greeted("simulator"), len(big) - 1, ErrorCode.MESSAGE_TOO_LARGE),  # past the trainer's max_message
    ]:
        [frame] = protocol.answer(Op.STEP, 1, 2, big, None, limit=limit)
        assert unpack_header(frame).kind == Kind.ERROR
        assert codec.unpackb(frame[HEADER_SIZE:])["code"] == code.value


def test_the_relay_forwards_chunks_of_requests_and_answers_only():
    relay = RelayPeerProtocol(max_frame=MAX_FRAME, max_protocol_errors=100)
    relay.receive_hello(control_frame(Hello(role="trainer", api_key="k")))
    assert isinstance(relay.receive(pack(Kind.REQUEST, Op.STEP | MORE, 1, 2, b"x")), Forward)
    assert isinstance(relay.receive(pack(Kind.RESPONSE, Op.RENDER | MORE, 1, 2, b"x")), Forward)
    refused = relay.receive(pack(Kind.ERROR, Op.STEP | MORE, 1, 2, b"x"))
    assert isinstance(refused, Refuse) and refused.error.code is ErrorCode.UNKNOWN_OP
    assert isinstance(relay.receive(pack(Kind.CONTROL, Op.STEP | MORE, 1, 2, b"x")), Refuse)
    assert isinstance(relay.receive(pack(Kind.REQUEST, MORE, 1, 2, b"x")), Refuse)  # no op at all


# -- compressed arrays --------------------------------------------------------


@pytest.mark.parametrize("codec_id", list(Codec))
@pytest.mark.parametrize("dtype", ["uint8", "float32", "int64", "bool"])
def test_compressed_arrays_come_back_equal_and_writable(codec_id, dtype):
    rng = np.random.default_rng(0)
    array = np.repeat(rng.integers(0, 3, size=(64, 12, 3)) * 40, 8, axis=1).astype(dtype)  # flat runs, as in frames
    policy = Compression(codec_id, Scope.ALL)
    payload = codec.packb({"obs": array, "small": np.ones(3, np.float32)}, policy)
    assert len(payload) < array.nbytes / 2
    out = codec.unpackb(payload)
    np.testing.assert_array_equal(out["obs"], array)
    assert out["obs"].dtype == array.dtype and out["obs"].shape == array.shape and out["obs"].flags.writeable
    out["obs"][0, 0, 0] = 1  # user code may write to what it receives, as to a local env's arrays


def test_auto_compresses_uint8_arrays_and_leaves_float_arrays_and_noise_raw():
    policy = Compression(Codec.LZ4)
    frame = np.zeros((210, 160, 3), np.uint8)
    floats = np.zeros(4096, np.float32)
    noise = np.random.default_rng(1).integers(0, 256, 100_000).astype(np.uint8)
    assert len(codec.packb(frame, policy)) < frame.nbytes * 0.05
    assert len(codec.packb(floats, policy)) > floats.nbytes
    assert len(codec.packb(noise, policy)) > noise.nbytes  # incompressible: sent raw
    assert len(codec.packb(np.zeros(100, np.uint8), policy)) > 100  # under the threshold


def _packed(codec_id: int, dtype: str, shape: tuple[int, ...], data: bytes) -> bytes:
    """A hand-made ext 5 payload: what a hostile peer may send."""
    header = codec._dtype_header(np.dtype(dtype), shape)
    return codec.msgpack.packb(codec.msgpack.ExtType(EXT_PACKED, bytes([codec_id]) + header + data))


def test_a_compressed_array_past_the_payloads_budget_is_refused_before_it_is_decompressed(monkeypatch):
    called = []
    monkeypatch.setattr(compression, "decompress", lambda *a: called.append(a))
    bomb = _packed(Codec.ZSTD, "uint8", (1 << 20, 1 << 20), b"\x00")  # states 1 TiB
    with pytest.raises(ProtocolError) as refused:
        codec.unpackb(bomb)
    assert refused.value.code is ErrorCode.MESSAGE_TOO_LARGE and called == []
    # The budget is for the whole payload, not for each array.
    two = codec.msgpack.packb([codec.msgpack.ExtType(EXT_PACKED, _packed(Codec.LZ4, "uint8", (1500,), b"")[3:])] * 2)
    with pytest.raises(ProtocolError):
        codec.unpackb(two, DecodeLimits(max_expanded=2500))
    assert len(called) == 1  # the first fits; the second is refused before it is decompressed


@pytest.mark.parametrize(
    "codec_id, data",
    [
        (Codec.ZSTD, zstandard.ZstdCompressor().compress(b"\x00" * 10_000)),  # expands past its 100 bytes
        (Codec.LZ4, lz4.block.compress(b"\x00" * 10_000, store_size=False)),
        (Codec.ZSTD, zstandard.ZstdCompressor().compress(b"\x00" * 50)),  # stops short
        (Codec.LZ4, lz4.block.compress(b"\x00" * 50, store_size=False)),
        (Codec.LZ4, b"\xff" * 40),  # garbage
        (Codec.ZSTD, b"\xff" * 40),
        (9, b"\x00" * 10),  # a codec nobody has
    ],
)
def test_a_compressed_array_that_does_not_expand_to_its_stated_size_is_refused(codec_id, data):
    with pytest.raises(ProtocolError) as refused:
        codec.unpackb(_packed(codec_id, "uint8", (100,), data))
    assert refused.value.code is ErrorCode.BAD_PAYLOAD


def test_a_zstd_frame_that_claims_a_huge_content_size_allocates_only_the_stated_array():
    claims = zstandard.ZstdCompressor(write_content_size=True).compress(b"\x00" * (64 << 20))
    with pytest.raises(ProtocolError):
        codec.unpackb(_packed(Codec.ZSTD, "uint8", (16,), claims))


# -- agreeing on compression at make ----------------------------------------------


def test_auto_picks_lz4_for_images_and_renders_and_nothing_for_small_vectors():
    pong = gym.spaces.Box(0, 255, (210, 160, 3), np.uint8)
    cartpole = gym.spaces.Box(-1, 1, (4,), np.float32)
    assert negotiate("auto", ["lz4", "zstd"], pong, None) == Compression(Codec.LZ4)
    assert negotiate("auto", ["lz4"], gym.spaces.Dict({"cam": pong, "pos": cartpole}), None) == Compression(Codec.LZ4)
    assert negotiate("auto", ["lz4", "zstd"], cartpole, None) is None
    assert negotiate("auto", ["lz4", "zstd"], cartpole, "rgb_array") == Compression(Codec.LZ4)
    assert negotiate("auto", [], pong, None) is None  # a trainer that reads no codec
    assert negotiate("none", ["lz4"], pong, None) is None
    assert negotiate("zstd", ["lz4", "zstd"], cartpole, None) == Compression(Codec.ZSTD, Scope.ALL)
    assert negotiate(None, None, pong, None) is None  # a trainer from before compression


@pytest.mark.parametrize("asked, readable, code", [
    ("brotli", ["lz4"], ErrorCode.BAD_PAYLOAD),
    (7, ["lz4"], ErrorCode.BAD_PAYLOAD),
    ("auto", "lz4", ErrorCode.BAD_PAYLOAD),
    ("zstd", ["lz4"], ErrorCode.UNSUPPORTED),
])  # fmt: skip
def test_a_bad_compression_request_is_refused_with_a_code(asked, readable, code):
    with pytest.raises(ProtocolError) as refused:
        negotiate(asked, readable, gym.spaces.Discrete(2), None)
    assert refused.value.code is code


def test_a_description_names_only_codecs_this_side_reads():
    assert compression.from_wire({"codec": "zstd", "scope": "all", "min_bytes": 1}) == Compression(
        Codec.ZSTD, Scope.ALL, 64
    )
    for bad in ({"codec": "gzip"}, {"codec": "lz4", "scope": "some"}, "lz4", {"codec": "lz4", "min_bytes": "x"}):
        with pytest.raises(ProtocolError):
            compression.from_wire(bad)


def test_tiny_compressed_arrays_each_cost_a_minimum_of_the_budget(monkeypatch):
    called = []
    monkeypatch.setattr(compression, "decompress", lambda *a: called.append(a))
    many = codec.msgpack.packb([codec.msgpack.ExtType(EXT_PACKED, _packed(Codec.ZSTD, "uint8", (1,), b"x")[3:])] * 100)
    with pytest.raises(ProtocolError) as refused:
        codec.unpackb(many, DecodeLimits(max_expanded=10 * MIN_PACKED_CHARGE))
    assert refused.value.code is ErrorCode.MESSAGE_TOO_LARGE and len(called) == 10


def test_hellos_control_messages_and_error_records_take_no_compressed_array(monkeypatch):
    called = []
    monkeypatch.setattr(compression, "decompress", lambda *a: called.append(a))
    bomb = codec.msgpack.ExtType(EXT_PACKED, _packed(Codec.ZSTD, "uint8", (1 << 20,), b"x")[3:])
    hello = codec.msgpack.packb({"op": "hello", "protocol": 2, "role": "trainer", "api_key": "k", "name": bomb})
    with pytest.raises(ProtocolError):
        parse_hello(hello)
    control = codec.msgpack.packb({"op": "open", "envs": 1, "per_simulator": bomb})
    with pytest.raises(ProtocolError):
        parse_peer_control(control)
    protocol = greeted()
    pending, _ = protocol.request(Kind.REQUEST, Op.STEP, 4, codec.packb(0))
    record = codec.msgpack.packb({"code": "env_error", "message": bomb, "remote_type": None})
    protocol.receive(pack(Kind.ERROR, Op.STEP, 4, pending.seq, record))
    with pytest.raises(ProtocolError):
        pending.reply.value()
    assert called == []


@pytest.mark.parametrize("array", [np.array("x" * 3000), np.arange(2000).astype("M8[ms]"), np.ones((40, 40))[::2]])
def test_any_array_that_travels_raw_travels_compressed_alike(array):
    for codec_id in Codec:
        out = codec.unpackb(codec.packb(array, Compression(codec_id, Scope.ALL, 64)))
        assert out.shape == array.shape and out.dtype == array.dtype
        np.testing.assert_array_equal(out, array)


def test_empty_chunks_and_small_ones_before_the_last_are_refused():
    reassembly = Reassembly(MAX_MESSAGE, MAX_MESSAGE, max_frame=1024)  # chunks of 1024: at least 512 but the last
    reassembly.take(Kind.REQUEST, Op.STEP, True, 1, 2, memoryview(chunks.SIZE_PREFIX.pack(5000) + b"a" * 1016))
    with pytest.raises(ChunkError):
        reassembly.take(Kind.REQUEST, Op.STEP, True, 1, 2, memoryview(b""))
    assert reassembly.partial == {} and reassembly.pending_bytes == 0


def test_a_request_kind_with_a_smaller_bound_is_refused_from_its_announced_size():
    protocol = greeted("simulator")
    protocol.request_limits[Op.MAKE] = 4096
    event = protocol.receive(pack(Kind.REQUEST, Op.MAKE | MORE, 3, 9, chunks.SIZE_PREFIX.pack(5000) + b"m" * 1016))
    assert isinstance(event, Unreadable) and event.error.code is ErrorCode.MESSAGE_TOO_LARGE
    assert protocol.reassembly.partial == {}


def test_a_simulator_drops_a_half_received_request_when_its_channel_ends():
    for ending in (Detach(channel=3), Paused(channels=[3])):
        protocol = greeted("simulator")
        first = chunks.split(Kind.REQUEST, Op.STEP, 3, 9, b"s" * 5000, MAX_FRAME)[0]
        assert protocol.receive(first) is None and protocol.reassembly.pending_bytes > 0
        protocol.receive(control_frame(ending))
        assert protocol.reassembly.partial == {} and protocol.reassembly.pending_bytes == 0


def test_a_message_that_cuts_another_off_is_passed_over_too():
    reassembly = Reassembly(MAX_MESSAGE, MAX_MESSAGE, max_frame=1024)
    old = chunks.split(Kind.RESPONSE, Op.STEP, 1, 2, b"o" * 3000, 1024)
    new = chunks.split(Kind.RESPONSE, Op.STEP, 1, 3, b"n" * 3000, 1024)
    take = lambda frame: reassembly.take(  # noqa: E731
        Kind.RESPONSE, Op.STEP, bool(unpack_header(frame).op & MORE), 1, unpack_header(frame).seq,
        memoryview(frame)[HEADER_SIZE:],
    )  # fmt: skip
    assert take(old[0]) is None
    with pytest.raises(ChunkError):
        take(new[0])
    assert [take(frame) for frame in new[1:]] == [None] * (len(new) - 1)  # never read as new messages
    assert reassembly.partial == {} and reassembly.skipping == {}


def test_a_trainer_sends_a_simulator_no_more_than_it_takes():
    protocol = greeted()
    protocol.peer_limits.update({5: 0, 6: 2000})
    with pytest.raises(ProtocolError) as one_frame:
        protocol.request(Kind.REQUEST, Op.STEP, 5, b"x" * 1500)  # a simulator from before chunks
    assert one_frame.value.code is ErrorCode.FRAME_TOO_LARGE
    with pytest.raises(ProtocolError) as too_large:
        protocol.request(Kind.REQUEST, Op.STEP, 6, b"x" * 2500)
    assert too_large.value.code is ErrorCode.MESSAGE_TOO_LARGE
    assert protocol.pending == {}  # refused before anything was sent or awaited
    assert len(protocol.request(Kind.REQUEST, Op.STEP, 6, b"x" * 1900)[1]) == 2  # within its limit: chunks


def test_a_simulator_reads_nothing_of_a_refused_request_down_to_its_last_chunk():
    protocol = greeted("simulator", max_message=MIN_MESSAGE)
    frames = chunks.split(Kind.REQUEST, Op.STEP, 6, 30, b"\x91\x01" * (MIN_MESSAGE // 2 + 1000), MAX_FRAME)
    events = [protocol.receive(frame) for frame in frames]
    assert isinstance(events[0], Unreadable) and events[0].error.code is ErrorCode.MESSAGE_TOO_LARGE
    assert events[1:] == [None] * (len(frames) - 1)  # the tail too: never taken for a request of its own
    assert protocol.reassembly.skipping == {} and protocol.reassembly.partial == {}
    assert isinstance(protocol.receive(pack(Kind.REQUEST, Op.STEP, 6, 31, codec.packb(1))), Request)

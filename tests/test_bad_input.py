"""Bad input at the relay and the simulator: each offender gets a coded error
(and is cut off where it must be); every other session goes on untouched.

Raw WebSocket peers stand in for misbehaving trainers and simulators; the
well-behaved session is a real trainer with a real simulator.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from conftest import SimulatorPool, init_trainer, local_gym
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

import remoterl_ray
from remoterl_ray.local import start_relay
from remoterl_ray.trainer.remote_env import RemoteEnv
from remoterl_ray.trainer.session import TrainerSession
from remoterl_ray.trainer.settings import TrainerSettings
from remoterl_ray.protocol import codec
from remoterl_ray.protocol.chunks import SIZE_PREFIX
from remoterl_ray.protocol.frames import HEADER_SIZE, MORE, Kind, Op, pack, unpack_header
from remoterl_ray.protocol.messages import Hello, Open, Welcome, control_frame, encode_control, parse_control

SMALL_FRAME = 64 * 1024
BIG_OBS = "remoterl_testenvs:BigObs-v0"


@pytest.fixture(scope="module")
def small_relay(keys):
    """A relay with a small frame limit, so oversized frames are cheap to make."""
    key = keys.take()
    relay = start_relay(api_keys=[key], extra_args=["--max-frame", str(SMALL_FRAME)])
    pool = SimulatorPool(relay, key)
    pool.start(1, extra_args=("--max-message-mib", "16"))
    yield relay, key
    pool.stop()
    relay.stop()


@pytest.fixture(scope="module")
def bystander(small_relay):
    """A well-behaved trainer session that must keep working throughout."""
    relay, key = small_relay
    assert init_trainer(relay, key)
    env = gym.make("CartPole-v1")
    env.reset(seed=0)
    yield env
    remoterl_ray.shutdown()


def still_fine(env) -> None:
    env.reset()
    obs, reward, *_ = env.step(0)
    assert obs.shape == (4,) and reward == 1.0


def raw(relay, hello: Hello | None = None, *, greet: bool = True):
    ws = connect(f"{relay.url}/ws", compression=None, max_size=None, legacy=True, proxy=None)
    if hello is not None:
        ws.send(control_frame(hello))
        if greet:
            reply = ws.recv(timeout=10)
            assert isinstance(parse_control(memoryview(reply)[HEADER_SIZE:]), Welcome)
    return ws


def raw_channel(relay, key: str):
    """A raw trainer connection with one channel opened: (the socket, the channel id)."""
    ws = raw(relay, Hello(role="trainer", api_key=key))
    ws.send(pack(Kind.CONTROL, 0, 0, 1, encode_control(Open(envs=1))))
    opened = parse_control(memoryview(ws.recv(timeout=10))[HEADER_SIZE:])
    return ws, opened.shards[0].channel


def expect_error(ws, code: str, *, seq: int | None = None) -> dict:
    frame = ws.recv(timeout=10)
    header = unpack_header(frame)
    assert header.kind == Kind.ERROR, header
    record = codec.unpackb(memoryview(frame)[HEADER_SIZE:])
    assert record["code"] == code, record
    if seq is not None:
        assert header.seq == seq
    return record


def expect_closed(ws, code: int) -> None:
    with pytest.raises(ConnectionClosed) as info:
        for _ in range(5):
            ws.recv(timeout=10)
    assert info.value.rcvd is not None and info.value.rcvd.code == code


def test_wrong_protocol_version_is_refused_and_disconnected(small_relay, bystander):
    relay, key = small_relay
    ws = raw(relay, Hello(role="trainer", api_key=key, protocol=99), greet=False)
    assert "not supported" in expect_error(ws, "protocol_version")["message"]
    expect_closed(ws, 1002)
    still_fine(bystander)


@pytest.mark.parametrize(
    "first_frame",
    [b"just text", b"\x01", pack(Kind.REQUEST, Op.STEP, 1, 1, b""), pack(Kind.CONTROL, 0, 0, 0, b"\xc1"),
     pack(Kind.CONTROL, 0, 0, 0, encode_control(Open(envs=1)))],
    ids=["text", "short", "not-control", "garbage", "not-hello"],
)
def test_bad_hello_is_refused_and_disconnected(small_relay, bystander, first_frame):
    relay, _ = small_relay
    ws = raw(relay)
    ws.send(first_frame.decode(errors="replace") if first_frame == b"just text" else first_frame)
    expect_error(ws, "bad_hello")
    expect_closed(ws, 1002)
    still_fine(bystander)


def test_wrong_key_on_raw_socket_gets_auth_error(small_relay, bystander):
    relay, _ = small_relay
    ws = raw(relay, Hello(role="simulator", api_key="forged"), greet=False)
    expect_error(ws, "auth_failed")
    expect_closed(ws, 1008)
    still_fine(bystander)


def test_malformed_frames_after_hello_get_coded_errors_and_the_peer_stays(small_relay, bystander):
    relay, key = small_relay
    ws = raw(relay, Hello(role="trainer", api_key=key))
    ws.send("text frame")
    expect_error(ws, "bad_frame")
    ws.send(b"\x02\x04")
    expect_error(ws, "bad_frame")
    ws.send(pack(9, 0, 0, 5))
    expect_error(ws, "bad_frame", seq=5)
    ws.send(pack(Kind.REQUEST, 200, 0, 6))
    expect_error(ws, "unknown_op", seq=6)
    ws.send(pack(Kind.CONTROL, 0, 0, 7, b"\xc1\xc1"))
    expect_error(ws, "bad_payload", seq=7)
    ws.send(pack(Kind.RESPONSE, Op.STEP, 1, 8, b""))  # trainers do not answer
    expect_error(ws, "bad_frame", seq=8)
    # step on a channel that was never opened (or already closed)
    ws.send(pack(Kind.REQUEST, Op.STEP, 424242, 9, codec.packb(0)))
    expect_error(ws, "unknown_channel", seq=9)
    # the same connection still works
    ws.send(pack(Kind.CONTROL, 0, 0, 10, encode_control(Open(envs=1))))
    frame = ws.recv(timeout=10)
    assert unpack_header(frame).seq == 10 and unpack_header(frame).kind == Kind.CONTROL
    ws.close()
    still_fine(bystander)


def test_garbage_payload_reaches_the_simulator_which_answers_with_a_code(small_relay, bystander):
    ws, channel = raw_channel(*small_relay)
    ws.send(pack(Kind.REQUEST, Op.MAKE, channel, 2, b"\xc1 not msgpack"))
    expect_error(ws, "bad_payload", seq=2)
    ws.send(pack(Kind.REQUEST, Op.MAKE, channel, 3, codec.packb(["not", "a", "map"])))
    expect_error(ws, "bad_payload", seq=3)
    ws.send(pack(Kind.REQUEST, Op.MAKE, channel, 4, codec.packb({"id": "CartPole-v1", "kwargs": {"bogus_kw": 1}})))
    assert expect_error(ws, "env_error", seq=4)["remote_type"] == "TypeError"
    ws.send(pack(Kind.REQUEST, Op.STEP, channel, 5, codec.packb(0)))
    expect_error(ws, "env_closed", seq=5)  # nothing was made on that channel
    ws.close()
    still_fine(bystander)


def test_oversized_frame_gets_a_coded_error_and_the_peer_stays(small_relay, bystander):
    relay, key = small_relay
    ws = raw(relay, Hello(role="trainer", api_key=key))
    ws.send(pack(Kind.REQUEST, Op.STEP, 1, 11, b"x" * (SMALL_FRAME + 1)))
    expect_error(ws, "frame_too_large", seq=11)
    ws.send(pack(Kind.CONTROL, 0, 0, 12, encode_control(Open(envs=1))))
    assert unpack_header(ws.recv(timeout=10)).seq == 12
    # Far past the limit the server's WebSocket layer cuts the connection (1009).
    ws.send(b"y" * (4 * SMALL_FRAME))
    expect_closed(ws, 1009)
    still_fine(bystander)


def test_a_request_past_the_frame_limit_travels_in_chunks_and_past_the_simulators_limit_is_refused(
    small_relay, bystander
):
    # CartPole judges the action as it would locally: the chunks reached it whole.
    with pytest.raises(remoterl_ray.RemoteEnvError):
        bystander.step(np.zeros(SMALL_FRAME))  # 512 KiB: 9 chunks through this relay
    with pytest.raises(remoterl_ray.FrameTooLargeError) as refused:
        bystander.step(np.zeros(SMALL_FRAME * 40))  # 20 MiB: the simulator takes 16
    assert refused.value.code.value == "message_too_large"
    still_fine(bystander)


def test_an_answer_past_the_frame_limit_arrives_whole_and_past_the_trainers_limit_is_refused(small_relay, bystander):
    env = gym.make(BIG_OBS, size=400_000)  # 1.6 MB observations, 25 frames each
    with local_gym():
        local = gym.make(BIG_OBS, size=400_000)
    np.testing.assert_array_equal(env.reset(seed=3)[0], local.reset(seed=3)[0])
    for action in (0, 1, 1):
        np.testing.assert_array_equal(env.step(action)[0], local.step(action)[0])
    env.close()
    relay, key = small_relay
    session = TrainerSession(TrainerSettings(relay_url=relay.url, api_key=key, max_message=1 << 20))
    try:
        small = RemoteEnv(session, BIG_OBS, size=400_000)  # this trainer takes 1 MiB at most
        with pytest.raises(remoterl_ray.FrameTooLargeError) as refused:
            small.reset(seed=0)
        assert refused.value.code.value == "message_too_large"
        small.close()
    finally:
        session.close()
    still_fine(bystander)


def test_a_request_announcing_a_huge_chunked_message_is_refused_before_it_is_read(small_relay, bystander):
    ws, channel = raw_channel(*small_relay)
    ws.send(pack(Kind.REQUEST, Op.MAKE, channel, 2, codec.packb({"id": "CartPole-v1", "kwargs": {}})))
    assert unpack_header(ws.recv(timeout=30)).kind == Kind.RESPONSE
    ws.send(pack(Kind.REQUEST, Op.STEP | MORE, channel, 3, SIZE_PREFIX.pack(1 << 40) + b"\0" * 1000))
    expect_error(ws, "message_too_large", seq=3)
    # A step that follows is read and answered: the simulator kept nothing of the refused one.
    ws.send(pack(Kind.REQUEST, Op.RESET, channel, 4, codec.packb({"seed": 0})))
    assert unpack_header(ws.recv(timeout=30)) == (Kind.RESPONSE, Op.RESET, channel, 4)
    ws.close()
    still_fine(bystander)


def test_a_simulator_sending_requests_is_told_off(small_relay, bystander):
    relay, key = small_relay
    ws = raw(relay, Hello(role="simulator", api_key=key))
    ws.send(pack(Kind.REQUEST, Op.STEP, 1, 3, b""))
    expect_error(ws, "bad_frame", seq=3)
    ws.send(pack(Kind.CONTROL, 0, 0, 4, encode_control(Open(envs=1))))
    expect_error(ws, "bad_payload", seq=4)
    ws.close()
    still_fine(bystander)


def test_a_flood_of_bad_frames_gets_the_peer_cut_off(small_relay, bystander):
    relay, key = small_relay
    ws = raw(relay, Hello(role="trainer", api_key=key))
    for _ in range(150):
        try:
            ws.send(b"\x00")
        except ConnectionClosed:
            break
    with pytest.raises(ConnectionClosed) as info:
        while True:
            ws.recv(timeout=10)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1008
    still_fine(bystander)

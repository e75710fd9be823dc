"""The embedded relay forwards a frame as it arrives while its peer's pump waits, and
leaves everything else to the pump. Several messages in one TCP write, mixing
forwards, control messages and refusals, must come out as the pump alone would
give them: in order, each refused once, each counted once."""

from __future__ import annotations

from typing import Any

from attackers import greeted

from remoterl_ray.protocol import codec
from remoterl_ray.protocol.frames import HEADER_SIZE, Kind, Op, pack, unpack_header
from remoterl_ray.protocol.messages import Detach, Hello, Open, Opened, Release, encode_control, parse_control


def burst(ws: Any, frames: list[bytes]) -> None:
    """Send ``frames`` as WebSocket messages in one TCP write (so the relay reads them together)."""
    with ws.protocol_mutex:
        for frame in frames:
            ws.protocol.send_binary(frame)
        ws.socket.sendall(b"".join(ws.protocol.data_to_send()))


def read(ws: Any, count: int) -> list[tuple[Any, ...]]:
    """The next ``count`` frames: (kind, seq, and the control message's type or the error code)."""
    out = []
    for _ in range(count):
        frame = ws.recv(timeout=10)
        header, body = unpack_header(frame), memoryview(frame)[HEADER_SIZE:]
        detail: Any = None
        if header.kind == Kind.CONTROL:
            detail = type(parse_control(body)).__name__
        elif header.kind == Kind.ERROR:
            detail = codec.unpackb(body).get("code")
        out.append((Kind(header.kind).name, header.seq, detail))
    return out


def open_channel(trainer: Any, seq: int) -> int:
    trainer.send(pack(Kind.CONTROL, Op.NONE, 0, seq, encode_control(Open(envs=1))))
    while True:
        frame = trainer.recv(timeout=10)
        header = unpack_header(frame)
        if header.kind == Kind.CONTROL and header.seq == seq:
            opened = parse_control(memoryview(frame)[HEADER_SIZE:])
            assert isinstance(opened, Opened), opened
            return opened.shards[0].channel


def test_bursts_of_forwards_controls_and_refusals_keep_their_order(relay, keys):
    key = keys.take()
    sim = greeted(relay, Hello(role="simulator", api_key=key, max_envs=4), "127.0.0.2")
    trainer = greeted(relay, Hello(role="trainer", api_key=key), "127.0.0.3")
    try:
        relay.wait_for(key, "simulator", 1)
        channel = open_channel(trainer, 1)

        # A simulator's answer, a request it may not send, two more answers.
        burst(sim, [
            pack(Kind.RESPONSE, Op.STEP, channel, 11, b"a"),
            pack(Kind.REQUEST, Op.STEP, channel, 12, b""),
            pack(Kind.RESPONSE, Op.STEP, channel, 13, b"b"),
            pack(Kind.RESPONSE, Op.STEP, channel, 14, b"c"),
        ])  # fmt: skip
        assert read(trainer, 3) == [("RESPONSE", 11, None), ("RESPONSE", 13, None), ("RESPONSE", 14, None)]
        assert read(sim, 1) == [("ERROR", 12, "bad_frame")]

        # A request, the release of its channel, a request on the released channel.
        burst(trainer, [
            pack(Kind.REQUEST, Op.STEP, channel, 21, b"x"),
            pack(Kind.CONTROL, Op.NONE, 0, 22, encode_control(Release(channels=[channel]))),
            pack(Kind.REQUEST, Op.STEP, channel, 23, b"y"),
        ])  # fmt: skip
        assert read(sim, 2) == [("REQUEST", 21, None), ("CONTROL", 0, Detach.__name__)]
        assert read(trainer, 1) == [("ERROR", 23, "unknown_channel")]

        # Many forwards with a refused one among them: the others arrive, in order, each once.
        channel = open_channel(trainer, 30)
        frames = [pack(Kind.REQUEST, Op.STEP, channel, 100 + i, b"") for i in range(500)]
        frames[250] = pack(Kind.REQUEST, Op.STEP, channel + 1000, 350, b"")
        burst(trainer, frames)
        assert [unpack_header(sim.recv(timeout=10)).seq for _ in range(499)] == [
            100 + i for i in range(500) if i != 250
        ]
        assert read(trainer, 1) == [("ERROR", 350, "unknown_channel")]
        [sim_stats] = relay.wait_for(key, "simulator", 1)
        [trainer_stats] = relay.wait_for(key, "trainer", 1)
        sent_by_trainer = 1 + 3 + 1 + 500  # after its hello: open, the second burst, open, the third burst
        sent_to_sim = 1 + 1 + 2 + 499  # its welcome, its refusal, a request and a detach, the third burst
        assert (trainer_stats["frames_in"], sim_stats["frames_out"]) == (sent_by_trainer, sent_to_sim)
    finally:
        sim.close()
        trainer.close()

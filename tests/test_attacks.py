"""The security review's findings, each replayed as an attack on real processes.

One relay (with small limits so attacks are cheap) serves a bystander
workspace: a real simulator process and a real trainer in this process.
Attackers come from other loopback addresses (127.0.0.2 and up), as other
hosts would. After every attack the relay must still be up, its memory
bounded, and the bystander must keep stepping with every step metered.
Registration attacks live in test_registration_security.py, placement at
scale in test_placement_scale.py, TLS in test_tls.py.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import gymnasium as gym
import httpx
import numpy as np
import pytest
from attackers import (
    UPGRADE,
    RawPeer,
    ScriptedSimulator,
    closed_by_peer,
    forged_answer,
    greeted,
    nested_tuples,
    rss_mb,
    tcp,
    websocket,
)
from conftest import SimulatorPool, new_key
from websockets.exceptions import ConnectionClosed

from remoterl_ray.api import trainer_settings
from remoterl_ray.local import LocalRelay, start_relay
from remoterl_ray.protocol import codec
from remoterl_ray.protocol.api_keys import format_key
from remoterl_ray.protocol.errors import ErrorCode, ProtocolError
from remoterl_ray.protocol.frames import HEADER_SIZE, Kind, Op, pack, unpack_header
from remoterl_ray.protocol.messages import Hello, Open, Release, control_frame, encode_control, parse_control
from remoterl_ray.protocol.affinity import session_id_for
from remoterl_ray.protocol.descriptions import parse_description
from remoterl_ray.addresses import address_key
from remoterl_ray.relay.auth import workspace_for_key
from remoterl_ray.relay.dashboard import source_of
from remoterl_ray.trainer.answers import check_batch, check_vector_info
from remoterl_ray.trainer.batching import merge_infos
from remoterl_ray.simulator.hosted import Hosted
from remoterl_ray.trainer.remote_env import RemoteEnv
from remoterl_ray.trainer.remote_vector_env import RemoteVectorEnv
from remoterl_ray.trainer.session import TrainerSession
from remoterl_ray.trainer.settings import TrainerSettings

ADMIN = "attack-tests-admin-token-0123"
MAX_FRAME = 2 << 20
PEER_BUFFER = 2 * MAX_FRAME
MEMORY_SLACK_MB = 48  # what an attack may leave the relay holding, at most


@dataclass
class Site:
    relay: LocalRelay
    attacker_key: str
    bystander_key: str
    session: TrainerSession
    env: gym.Env

    def metered_steps(self) -> int:
        workspace = self.relay.stats()["workspaces"].get(workspace_for_key(self.bystander_key), {})
        return sum(t["env_steps"] for t in workspace.get("trainers", []))

    def bystander_steps(self, count: int = 20) -> None:
        """The bystander steps ``count`` times, and the relay meters every one of them."""
        before = self.metered_steps()
        self.env.reset(seed=0)
        for _ in range(count):
            _, reward, terminated, truncated, _ = self.env.step(self.env.action_space.sample())
            assert reward == 1.0
            if terminated or truncated:
                self.env.reset()
        assert self.metered_steps() == before + count

    def rss(self) -> float:
        return rss_mb(self.relay.process.pid)


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    attacker, bystander = new_key("attacker"), new_key("bystander")
    relay = start_relay(
        api_keys=[attacker, bystander],
        admin_token=ADMIN,
        extra_args=["--handshake-timeout", "2", "--max-pending-per-address", "16", "--max-frame", str(MAX_FRAME),
                    "--max-peer-buffer", str(PEER_BUFFER)],  # fmt: skip
    )
    pool = SimulatorPool(relay, bystander)
    session = None
    try:
        pool.start(1)
        session = TrainerSession(TrainerSettings(relay_url=relay.url, api_key=bystander, timeout=30.0))
        assert session.links.wait_for_simulators(1, 30) == 1
        env = RemoteEnv(session, "CartPole-v1")
        yield Site(relay, attacker, bystander, session, env)
    finally:
        if session is not None:
            session.close()
        pool.stop()
        relay.stop()


@pytest.fixture
def watched(site: Site) -> Iterator[Site]:
    """The site, checked after the test's attack: relay up, memory bounded, bystander served."""
    site.bystander_steps(5)
    before = site.rss()
    yield site
    assert site.relay.process.alive(), site.relay.process.output()[-3000:]
    assert site.rss() < before + MEMORY_SLACK_MB, (before, site.rss())
    site.bystander_steps()


def expect_error(ws, code: str) -> dict:
    frame = ws.recv(timeout=10)
    assert unpack_header(frame).kind == Kind.ERROR
    record = codec.unpackb(memoryview(frame)[HEADER_SIZE:])
    assert record["code"] == code, record
    return record


def expect_closed(ws, code: int | None = None) -> None:
    with pytest.raises(ConnectionClosed) as info:
        for _ in range(10):
            ws.recv(timeout=10)
    if code is not None:
        assert info.value.rcvd is not None and info.value.rcvd.code == code, info.value


def hello_frame(payload: bytes) -> bytes:
    return pack(Kind.CONTROL, Op.NONE, 0, 0, payload)


# -- 1. one unauthenticated frame must not kill anything -----------------------


def test_nested_hello_gets_bad_hello_and_the_relay_stays_up(watched):
    ws = websocket(watched.relay, "127.0.0.2")
    ws.send(hello_frame(nested_tuples(250)))
    expect_error(ws, "bad_hello")
    expect_closed(ws, 1002)


def test_nested_request_gets_bad_payload_from_the_simulator(watched):
    ws = greeted(watched.relay, Hello(role="trainer", api_key=watched.bystander_key), "127.0.0.2")
    ws.send(pack(Kind.CONTROL, Op.NONE, 0, 1, encode_control(Open(envs=1))))
    channel = parse_control(memoryview(ws.recv(timeout=10))[HEADER_SIZE:]).shards[0].channel
    for depth in (250, 5000):
        ws.send(pack(Kind.REQUEST, Op.MAKE, channel, depth, nested_tuples(depth)))
        assert "bad_payload" == expect_error(ws, "bad_payload")["code"]
    ws.close()


def test_nested_answer_gets_a_coded_error_on_the_trainer(watched):
    sim = ScriptedSimulator(watched.relay, watched.attacker_key, lambda op, channel, request: nested_tuples(5000))
    session = TrainerSession(TrainerSettings(relay_url=watched.relay.url, api_key=watched.attacker_key, timeout=10))
    try:
        assert session.links.wait_for_simulators(1, 10) == 1
        with pytest.raises(ProtocolError) as info:
            RemoteEnv(session, "CartPole-v1")
        assert info.value.code is ErrorCode.BAD_PAYLOAD
    finally:
        session.close()
        sim.close()


# -- 2. a trainer cannot run code on a simulator ----------------------------------


def request(ws, op: int, channel: int, seq: int, arg: object) -> dict:
    """Send one request; the simulator's answer (or error record) for it."""
    ws.send(pack(Kind.REQUEST, op, channel, seq, codec.packb(arg)))
    while True:
        frame = ws.recv(timeout=30)
        header = unpack_header(frame)
        if header.seq == seq and header.kind in (Kind.RESPONSE, Kind.ERROR):
            value = codec.unpackb(memoryview(frame)[HEADER_SIZE:])
            return value if header.kind == Kind.ERROR else {"code": "ok", "value": value}


def open_channel(ws, seq: int) -> int:
    ws.send(pack(Kind.CONTROL, Op.NONE, 0, seq, encode_control(Open(envs=1))))
    while True:
        frame = ws.recv(timeout=30)
        if unpack_header(frame).seq == seq:
            return parse_control(memoryview(frame)[HEADER_SIZE:]).shards[0].channel


def test_the_register_chain_runs_nothing_on_the_simulator(watched, tmp_path):
    marker = tmp_path / "pwned"
    pool = SimulatorPool(watched.relay, watched.attacker_key)
    try:
        [simulator] = pool.start(1, allow=("template_envs", "gymnasium"))
        ws = greeted(watched.relay, Hello(role="trainer", api_key=watched.attacker_key), "127.0.0.2")
        stage, pwn = open_channel(ws, 1), open_channel(ws, 2)
        plant = {"id": "Pwn-v0", "entry_point": "os:system"}
        for entry_point in ("template_envs:register", "gymnasium:register", "gymnasium.envs.registration:register"):
            answer = request(ws, Op.REGISTER, stage, 3, {"id": "Stage-v0", "entry_point": entry_point, "kwargs": plant})
            assert answer["code"] == "register_refused", answer
        assert request(ws, Op.MAKE, stage, 4, {"id": "Stage-v0", "kwargs": {}})["code"] == "unknown_env"
        answer = request(ws, Op.MAKE, pwn, 5, {"id": "Pwn-v0", "kwargs": {"command": f"touch {marker}"}})
        assert answer["code"] == "unknown_env"
        poison = {"id": "CartPole-v1", "entry_point": "template_envs:TinyEnv"}  # the next trainer's env
        assert request(ws, Op.REGISTER, stage, 6, poison)["value"]["registered"] is False
        ws.close()
        assert not marker.exists() and simulator.alive()
    finally:
        pool.stop()


# -- 3. resources are bounded before authentication and after ---------------------


def test_a_ping_flood_that_never_reads_is_cut_off(watched):
    sock = tcp(watched.relay, "127.0.0.2")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(UPGRADE + b"\r\n")
    ping = bytes([0x89, 0x80 | 125]) + b"\0\0\0\0" + b"p" * 125
    sent, deadline = 0, time.monotonic() + 20
    with pytest.raises(OSError):  # reset by the relay: it does not keep pongs for a peer that never reads
        while time.monotonic() < deadline:
            sock.sendall(ping * 64)
            sent += len(ping) * 64
    assert sent < 200 * 1024 * 1024
    sock.close()


def test_a_trainer_that_does_not_read_its_answers_is_cut_off(watched):
    big = np.zeros(900_000, dtype=np.uint8)
    sim = ScriptedSimulator(watched.relay, watched.attacker_key, lambda op, channel, request: big)
    sock = tcp(watched.relay, "127.0.0.2")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        from websockets.sync.client import connect

        ws = connect(f"{watched.relay.url}/ws", sock=sock, compression=None, max_size=None, proxy=None, legacy=True)
        ws.send(control_frame(Hello(role="trainer", api_key=watched.attacker_key)))
        ws.recv(timeout=10)
        ws.send(pack(Kind.CONTROL, Op.NONE, 0, 1, encode_control(Open(envs=1))))
        frame = ws.recv(timeout=10)
        while unpack_header(frame).seq != 1:
            frame = ws.recv(timeout=10)
        channel = parse_control(memoryview(frame)[HEADER_SIZE:]).shards[0].channel
        for seq in range(2, 80):  # 70 MB of answers for a peer that reads none of them
            ws.send(pack(Kind.REQUEST, Op.STEP, channel, seq, codec.packb(0)))
        # The relay holds the simulator back once a quarter of the trainer's cap is queued, and cuts the
        # trainer off after a 10 s window in which it took less than 1 MiB (its client's reader thread
        # fills its own queue first, so that may be the second window).
        assert closed_by_peer(sock, 40), "the relay kept buffering for a trainer that does not read"
    finally:
        sock.close()
        sim.close()


def test_silent_and_half_sent_requests_are_closed_and_refused_beyond_the_cap(watched):
    relay = watched.relay
    silent = [tcp(relay, "127.0.0.3") for _ in range(8)]
    half = [tcp(relay, "127.0.0.3") for _ in range(8)]
    for sock in half:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: relay\r\nX-Slow: ")
    over = tcp(relay, "127.0.0.3")  # the address has 16 connections not yet admitted: refused at once
    assert over.recv(200).startswith(b"HTTP/1.1 503")
    with urllib.request.urlopen(f"{relay.http_url}/healthz", timeout=5) as resp:  # other addresses are served
        assert json.loads(resp.read()) == {"ok": True}
    assert all(closed_by_peer(sock, 6) for sock in silent + half)
    for sock in silent + half + [over]:
        sock.close()


def test_headers_are_bounded_and_a_long_upgrade_line_is_answered(watched):
    sock = tcp(watched.relay, "127.0.0.4")
    with pytest.raises(OSError):  # 20 MB of headers: cut off long before the end
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n")
        for i in range(2000):
            sock.sendall(b"X-Pad-%d: %s\r\n" % (i, b"a" * 10_000))
    sock.close()
    for extra in (b"X-Long: " + b"a" * 9000 + b"\r\n", b"".join(b"X-%d: a\r\n" % i for i in range(300))):
        sock = tcp(watched.relay, "127.0.0.4")
        sock.sendall(UPGRADE + extra + b"\r\n")
        status = sock.recv(100)
        assert status.startswith(b"HTTP/1.1 4"), status  # 400/431, never a hang
        assert closed_by_peer(sock, 10)
        sock.close()


def test_hello_fields_and_size_are_bounded(watched):
    ws = websocket(watched.relay, "127.0.0.4")
    ws.send(hello_frame(codec.packb({"op": "hello", "role": "trainer", "capabilities": ["x" * 1000] * 2})))
    assert "capabilities" in expect_error(ws, "bad_hello")["message"]
    ws = websocket(watched.relay, "127.0.0.4")
    ws.send(hello_frame(codec.packb({"op": "hello", "role": "trainer", "name": "n" * 5000})))
    assert "exceeds" in expect_error(ws, "bad_hello")["message"]
    ws = websocket(watched.relay, "127.0.0.4")
    ws.send(hello_frame(b"\x00" * 200_000))  # beyond what a peer may send before it is admitted
    expect_closed(ws, 1009)


def upgrade_reply(relay: LocalRelay, source: str) -> bytes:
    """What the relay answers a WebSocket upgrade from ``source`` (status line, headers, body)."""
    with tcp(relay, source) as sock:
        sock.sendall(UPGRADE + b"\r\n")
        reply = b""
        while b"\r\n\r\n" not in reply or reply.startswith(b"HTTP/1.1 503") and not reply.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        return reply


def served_again(relay: LocalRelay, source: str, timeout: float, why: str) -> None:
    """Wait (at most ``timeout`` s) until an upgrade from ``source`` is no longer refused with a 503."""
    deadline = time.monotonic() + timeout
    while upgrade_reply(relay, source).startswith(b"HTTP/1.1 503"):
        assert time.monotonic() < deadline, why
        time.sleep(0.1)


def test_connections_in_all_are_capped_with_a_clear_refusal():
    relay = start_relay(api_keys=[new_key("cap")], extra_args=["--max-connections", "24"])
    try:
        held = [tcp(relay, f"127.0.1.{i}") for i in range(1, 25)]
        time.sleep(0.5)
        refused = upgrade_reply(relay, "127.0.1.99")
        assert refused.startswith(b"HTTP/1.1 503") and b"maximum of 24 connections" in refused, refused
        for sock in held:
            sock.close()
        served_again(relay, "127.0.1.99", 10, "closed connections were never uncounted")
    finally:
        relay.stop()


# -- 5. open mode: a key reaches only its own workspace -------------------------


def test_open_mode_keys_with_the_same_tag_do_not_meet():
    relay = start_relay(open_mode=True)
    tag, key_id = "0123456789", "89abcdef"
    owner, other = format_key(tag, key_id, "a" * 48), format_key(tag, key_id, "b" * 48)
    sim = ScriptedSimulator(relay, owner, lambda op, channel, request: None)
    try:
        for key, simulators in ((other, 0), (owner, 1)):
            ws = greeted(relay, Hello(role="trainer", api_key=key), "127.0.0.1")
            ws.send(pack(Kind.CONTROL, Op.NONE, 0, 1, encode_control(Open(envs=1))))
            frame = ws.recv(timeout=10)
            if simulators:
                assert unpack_header(frame).kind == Kind.CONTROL
            else:
                assert codec.unpackb(memoryview(frame)[HEADER_SIZE:])["code"] == "no_simulator"
            ws.close()
        # keyless peers share the one workspace named "open"
        keyless = greeted(relay, Hello(role="trainer", api_key=None), "127.0.0.1")
        keyless.close()
        assert workspace_for_key(owner) != workspace_for_key(other)
    finally:
        sim.close()
        relay.stop()


# -- 6. a simulator cannot hurt its trainer ------------------------------------


def describe_as(space: gym.spaces.Space) -> dict:
    env = gym.make("CartPole-v1")
    env.observation_space = space
    return Hosted(env, vector=False, num_envs=1).describe()


@pytest.mark.parametrize(
    "description",
    [
        {**describe_as(gym.spaces.Discrete(2)), "observation_space": {"type": "Box", "low": 0.0, "high": 1.0,
                                                                       "shape": [8000, 8000], "dtype": "<f8"}},
        {**describe_as(gym.spaces.Discrete(2)), "observation_space": {"type": "Discrete", "n": 2**64 - 1, "start": 0}},
        {**describe_as(gym.spaces.Discrete(2)), "spec": {"id": 7}},
        ["not", "a", "description"],
    ],
    ids=["huge-box", "huge-discrete", "bad-spec", "not-a-map"],
)
def test_a_malicious_description_is_a_coded_error_not_an_allocation(watched, description):
    refused_without_allocating(watched, description)


def refused_without_allocating(watched, description, budget: int = 32 << 20) -> None:
    """A trainer given ``description`` raises a coded error, having allocated at most its space budget."""
    sim = ScriptedSimulator(watched.relay, watched.attacker_key, lambda op, channel, request: description)
    settings = TrainerSettings(relay_url=watched.relay.url, api_key=watched.attacker_key, timeout=10,
                               max_space_bytes=budget)  # fmt: skip
    session = TrainerSession(settings)
    before = rss_mb(os.getpid())
    try:
        assert session.links.wait_for_simulators(1, 10) == 1
        with pytest.raises(ProtocolError) as info:
            RemoteEnv(session, "CartPole-v1")
        assert info.value.code is ErrorCode.BAD_PAYLOAD
        assert rss_mb(os.getpid()) < before + 2 * budget / 2**20 + 32
    finally:
        session.close()
        sim.close()


def test_the_space_limit_is_the_trainers_to_set(watched, monkeypatch):
    image = describe_as(gym.spaces.Box(0, 255, (20, 20), np.uint8))
    sim = ScriptedSimulator(watched.relay, watched.attacker_key, lambda op, channel, request: image)
    try:
        for limit, fits in ((4 * 400 - 1, False), (4 * 400, True)):  # low, high, bounded_below/above: 400 bytes each
            settings = TrainerSettings(relay_url=watched.relay.url, api_key=watched.attacker_key, max_space_bytes=limit)
            session = TrainerSession(settings)
            try:
                assert session.links.wait_for_simulators(1, 10) == 1
                if fits:
                    assert RemoteEnv(session, "CartPole-v1").observation_space.shape == (20, 20)
                else:
                    with pytest.raises(ProtocolError, match="max_space_bytes"):
                        RemoteEnv(session, "CartPole-v1")
            finally:
                session.close()
    finally:
        sim.close()
    monkeypatch.setenv("REMOTERL_MAX_SPACE_BYTES", "800")
    assert trainer_settings().max_space_bytes == 800


class LyingShard:
    """Hosts a CartPole-shaped vector shard and, after every answer, forges answers
    for the neighbouring seqs and channels (another shard's requests) with obs 666."""

    def __init__(self) -> None:
        self.envs: dict[int, int] = {}

    def answer(self, op: int, channel: int, request: object) -> object:
        if op == Op.MAKE_VEC:
            self.envs[channel] = request["num_envs"]
            env = gym.make_vec("CartPole-v1", num_envs=self.envs[channel], vectorization_mode="sync")
            return Hosted(env, vector=True, num_envs=self.envs[channel]).describe()
        n = self.envs.get(channel, 1)
        obs = np.zeros((n, 4), np.float32)
        if op == Op.RESET:
            return [obs, {}]
        if op == Op.STEP:
            return [obs, np.ones(n), np.zeros(n, bool), np.zeros(n, bool), {}]
        return None

    def forge(self, op: int, channel: int, seq: int) -> list[bytes]:
        n = self.envs.get(channel, 1)
        lie = [np.full((n, 4), 666, np.float32), np.ones(n), np.zeros(n, bool), np.zeros(n, bool), {}]
        return [
            forged_answer(op, ch, s, lie)
            for ch in (channel - 1, channel, channel + 1)
            for s in range(max(1, seq - 3), seq + 4)
            if (ch, s) != (channel, seq)
        ]


def test_answers_count_only_from_the_simulator_owning_the_channel(watched):
    key = new_key("liar")
    relay = start_relay(api_keys=[key])
    pool = SimulatorPool(relay, key)
    shard = LyingShard()
    liar = None
    session = TrainerSession(TrainerSettings(relay_url=relay.url, api_key=key, timeout=10, num_env_runners=2))
    try:
        pool.start(1)
        liar = ScriptedSimulator(relay, key, shard.answer, extra=shard.forge, name="liar")
        assert session.links.wait_for_simulators(2, 10) == 2
        envs = RemoteVectorEnv(session, "CartPole-v1", 4, vectorization_mode="sync")
        shards = envs._remote.shards
        assert len(shards) == 2
        [(start, stop)] = [envs._remote.bounds[i] for i, s in enumerate(shards) if s.simulator != liar.peer_id]
        obs, _ = envs.reset(seed=1)
        honest = [obs[start:stop]]
        for _ in range(60):
            obs, *_ = envs.step(envs.action_space.sample())
            honest.append(obs[start:stop])
        # The liar may say what it likes about its own shard, never about the honest one's.
        assert not any((batch == 666).any() for batch in honest), "a forged answer was taken for another shard"
        assert all(np.abs(batch).sum() > 0 for batch in honest)  # real CartPole states
        assert liar.requests  # and it did get requests to lie after
        envs.close()
    finally:
        session.close()
        if liar is not None:
            liar.close()
        pool.stop()
        relay.stop()


# -- 7. refused and broken connections cost one short log line each -------------


def test_refusals_and_garbage_do_not_flood_the_log_or_print_tracebacks(watched):
    relay = watched.relay
    log_before = relay.process.output()
    for i in range(40):  # a refused hello, then at once a hang-up
        ws = websocket(relay, f"127.0.2.{i % 8 + 1}")
        ws.send(control_frame(Hello(role="trainer", api_key="forged")))
        ws.close()
    for i in range(40):  # a text frame that is not UTF-8
        sock = tcp(relay, f"127.0.3.{i % 8 + 1}")
        sock.sendall(UPGRADE + b"\r\n")
        sock.recv(4096)
        sock.sendall(bytes([0x81, 0x82]) + b"\0\0\0\0" + b"\xff\xfe")
        closed_by_peer(sock, 5)
        sock.close()
    codes = []
    for _ in range(25):  # malformed hellos count like bad keys towards the address's limit
        ws = websocket(relay, "127.0.4.1")
        ws.send(hello_frame(b"\xc1"))
        codes.append(codec.unpackb(memoryview(ws.recv(timeout=10))[HEADER_SIZE:])["code"])
        ws.close()
    assert codes[0] == "bad_hello" and codes[-1] == "rate_limited"
    time.sleep(0.5)
    added = relay.process.output()[len(log_before) :]
    assert "Traceback" not in added
    assert len(added.splitlines()) < 60, added


# -- 8. proxy headers are believed only from proxies the operator names ---------


def bad_key_from(relay: LocalRelay, source: str, forwarded_for: str) -> str:
    ws = websocket(relay, source, additional_headers={"X-Forwarded-For": forwarded_for})
    ws.send(control_frame(Hello(role="trainer", api_key="forged")))
    code = codec.unpackb(memoryview(ws.recv(timeout=10))[HEADER_SIZE:])["code"]
    ws.close()
    return code


def test_forwarded_for_is_ignored_unless_the_proxy_is_trusted(watched):
    relay = watched.relay
    codes = [bad_key_from(relay, "127.0.5.1", f"10.0.0.{i}") for i in range(22)]  # a new "address" each time
    assert codes[-1] == "rate_limited", codes  # counted against the real source all the same
    assert bad_key_from(relay, "127.0.5.2", "127.0.5.1") == "auth_failed"  # a victim's address is not blamed
    trusting = start_relay(api_keys=[new_key("proxy")], extra_args=["--trusted-proxy", "127.0.6.1"])
    try:
        codes = [bad_key_from(trusting, "127.0.6.1", "10.9.9.9") for _ in range(22)]
        assert codes[-1] == "rate_limited"
        assert bad_key_from(trusting, "127.0.6.1", "10.9.9.8") == "auth_failed"  # the proxy's other clients
    finally:
        trusting.stop()


# -- 10. the smaller points -------------------------------------------------------


def test_no_schema_no_pid_and_safe_http_headers(watched):
    base = watched.relay.http_url
    for path in ("/openapi.json", "/docs", "/redoc"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + path, timeout=5)
        assert info.value.code == 404
    with urllib.request.urlopen(base + "/healthz", timeout=5) as resp:
        assert json.loads(resp.read()) == {"ok": True}
        assert resp.headers["X-Frame-Options"] == "DENY" and resp.headers["X-Content-Type-Options"] == "nosniff"
    with httpx.Client(base_url=base, timeout=5) as http:
        page = http.get("/dashboard")
        policy = page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy and "script-src 'sha256-" in policy
        assert http.post("/dashboard/logout", headers={"Origin": "http://evil.example"}).status_code == 403
        assert http.post("/dashboard/login", json={"token": ADMIN}, headers={"Origin": "http://evil.example"}).status_code == 403
        too_large = http.post("/dashboard/login", content=b"x" * 100_000, headers={"content-type": "application/json"})
        assert too_large.status_code == 413 and too_large.json()["error"]["code"] == "bad_payload"
        assert http.post("/dashboard/logout").status_code == 200


def test_limits_come_from_the_config_file(tmp_path):
    config = tmp_path / "relay.yaml"
    config.write_text(
        "hello_timeout: 1\nmax_channels_per_trainer: 2\nmax_protocol_errors: 3\n"
        "limits: {max_connections_per_address: 4, handshake_timeout: 1}\n"
    )
    key = new_key("configured")
    relay = start_relay(api_keys=[key], extra_args=["--config", str(config)])
    sim = ScriptedSimulator(relay, key, lambda op, channel, request: None)
    try:
        ws = websocket(relay, "127.0.7.1")  # says nothing: refused after the hello timeout
        assert "no hello" in expect_error(ws, "bad_hello")["message"]
        trainer = greeted(relay, Hello(role="trainer", api_key=key), "127.0.7.2")
        codes = []
        for seq in (1, 2, 3):
            trainer.send(pack(Kind.CONTROL, Op.NONE, 0, seq, encode_control(Open(envs=1))))
            frame = trainer.recv(timeout=10)
            codes.append(codec.unpackb(memoryview(frame)[HEADER_SIZE:]).get("code", "opened"))
        assert codes[:2] == ["opened", "opened"] and codes[2] == "capacity"
        for _ in range(4):  # malformed frames beyond max_protocol_errors end the connection
            trainer.send(b"\x00")
        expect_closed(trainer, 1008)
        held = [tcp(relay, "127.0.7.3") for _ in range(4)]
        assert tcp(relay, "127.0.7.3").recv(200).startswith(b"HTTP/1.1 503")
        assert all(closed_by_peer(sock, 5) for sock in held)  # the 1 s handshake deadline
    finally:
        sim.close()
        relay.stop()


def test_the_connection_cap_stays_below_the_open_file_limit():
    """With few file descriptors the relay serves fewer connections rather than
    letting accept() fail (which starved /healthz and every real peer)."""
    import subprocess
    import sys

    probe = (
        "import resource\n"
        "from remoterl_ray.relay.guarded_server import raise_fd_limit\n"
        "from remoterl_ray.relay.server_limits import ServerLimits\n"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (300, hard))\n"
        "print(raise_fd_limit(ServerLimits(max_connections=900)).max_connections)\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300))\n"
        "print(raise_fd_limit(ServerLimits()).max_connections)\n"
        "print(hard)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    raised, soft, fitted, hard = (int(line) for line in out.stdout.split())
    assert raised == min(900, hard - 64) and soft == min(900 + 64, hard)  # raised as far as the cap needs
    assert fitted == 300 - 64  # the hard limit allows no more: serve fewer


# -- found by an attacker's review of the above --------------------------------


def test_an_error_that_repeats_a_huge_request_cannot_end_the_simulator(watched):
    pool = SimulatorPool(watched.relay, watched.attacker_key)
    try:  # one simulator takes make requests of any size, one keeps the default limit
        [open_sim] = pool.start(1, extra_args=("--max-make-bytes", str(32 << 20)))
        ws = greeted(watched.relay, Hello(role="trainer", api_key=watched.attacker_key), "127.0.0.2")
        channel = open_channel(ws, 1)
        huge = {"id": "CartPole-v1", "kwargs": {"k" * (MAX_FRAME * 3 // 4): 1}}  # its TypeError repeats the kwargs
        answer = request(ws, Op.MAKE, channel, 2, huge)
        assert answer["code"] == "env_error" and len(answer["message"]) < 3000, answer["code"]
        assert request(ws, Op.MAKE, channel, 3, {"id": "CartPole-v1", "kwargs": {}})["code"] == "ok"
        assert open_sim.alive()
        [strict] = pool.start(1)
        pool.procs.remove(open_sim)
        open_sim.stop()
        watched.relay.wait_for(watched.attacker_key, "simulator", 1)
        channel = open_channel(ws, 4)
        answer = request(ws, Op.MAKE, channel, 5, {"id": "CartPole-v1", "kwargs": {"desc": ["S" * 100] * 1000}})
        assert answer["code"] == "bad_payload" and "--max-make-bytes" in answer["message"]
        answer = request(ws, Op.MAKE_VEC, channel, 6, {"id": "CartPole-v1", "num_envs": 16, "vectorization_mode": "async"})
        assert answer["code"] == "unsupported" and "--allow-processes" in answer["message"]
        assert strict.alive()
        ws.close()
    finally:
        pool.stop()


def test_a_closed_connection_lets_go_of_what_its_peer_never_read(tmp_path):
    config = tmp_path / "relay.yaml"
    config.write_text("limits: {close_timeout: 1, max_connections: 2}\n")
    key = new_key("hoarder")
    relay = start_relay(api_keys=[key], extra_args=["--config", str(config)])
    big = np.zeros(900_000, dtype=np.uint8)
    sim = ScriptedSimulator(relay, key, lambda op, channel, request: big)
    try:
        hoarder = RawPeer(relay, "127.0.7.4", rcvbuf=4096)
        hoarder.send(control_frame(Hello(role="trainer", api_key=key)))
        hoarder.recv()  # the welcome
        hoarder.send(pack(Kind.CONTROL, Op.NONE, 0, 1, encode_control(Open(envs=1))))
        channel = parse_control(hoarder.recv()[HEADER_SIZE:]).shards[0].channel
        for seq in range(2, 22):  # 18 MB of answers, under the 64 MiB cap, none of them read
            hoarder.send(pack(Kind.REQUEST, Op.STEP, channel, seq, codec.packb(0)))
        time.sleep(1)
        assert upgrade_reply(relay, "127.0.7.5").startswith(b"HTTP/1.1 503")  # simulator, hoarder, this: full
        hoarder.send(b"\x03\xe8", opcode=0x8)  # a close, and still not a byte read (reading would drain it)
        served_again(relay, "127.0.7.5", 15, "the closed connection still counts")
    finally:
        sim.close()
        relay.stop()


def test_trusted_proxies_are_not_capped_as_one_client():
    relay = start_relay(api_keys=[new_key("proxied")],
                        extra_args=["--trusted-proxy", "127.0.8.1", "--max-pending-per-address", "4"])  # fmt: skip
    try:
        through_proxy = [tcp(relay, "127.0.8.1") for _ in range(10)]  # ten of the proxy's clients
        with tcp(relay, "127.0.8.1") as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 200")
        direct = [tcp(relay, "127.0.8.2") for _ in range(4)]
        assert upgrade_reply(relay, "127.0.8.2").startswith(b"HTTP/1.1 503")  # others are still capped
        for sock in through_proxy + direct:
            sock.close()
    finally:
        relay.stop()


def test_stats_need_a_token_or_an_explicit_local_stats():
    relay = start_relay(api_keys=[new_key("quiet")], local_stats=False)
    try:  # a proxy on this host would make every client a loopback one
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{relay.http_url}/v1/stats", timeout=5)
        assert info.value.code == 401 and b"--local-stats" in info.value.read()
    finally:
        relay.stop()


@pytest.mark.parametrize(
    "description",
    [
        {**describe_as(gym.spaces.Discrete(2)),
         "observation_space": {"type": "Box", "low": 0, "high": 1, "shape": [4], "dtype": "|S300000000"}},
        {**describe_as(gym.spaces.Discrete(2)),
         "observation_space": functools.reduce(lambda inner, _: {"type": "Sequence", "space": inner, "stack": True},
                                               range(16), {"type": "Box", "low": 0.0, "high": 1.0, "shape": [64, 64],
                                                           "dtype": "<f8"})},
        {**describe_as(gym.spaces.Discrete(2)), "spec": {"id": "a/b/c:::v"}},
        {**describe_as(gym.spaces.Discrete(2)), "metadata": {"autoreset_mode": "bogus"}},
    ],
    ids=["string-dtype", "stacked-sequences", "spec-id", "autoreset-mode"],
)  # fmt: skip
def test_descriptions_that_would_allocate_or_break_later_are_refused(watched, description):
    refused_without_allocating(watched, description)


def test_vector_infos_and_batches_are_checked_before_use():
    with pytest.raises(ProtocolError, match="mask"):  # a mask longer than the shard
        check_vector_info({"x": np.zeros(3), "_x": np.ones(5, bool)}, 3)
    with pytest.raises(ProtocolError, match="keys must be strings"):
        check_vector_info({1: np.zeros(3)}, 3)
    with pytest.raises(ProtocolError, match="one row per env"):
        check_vector_info({"final_info": [1], "_final_info": np.ones(3, bool)}, 3)
    check_vector_info({"episode": {"r": np.zeros(3), "_r": np.ones(3, bool)}, "_episode": np.ones(3, bool)}, 3)
    lonely = np.array([np.zeros(250_000)], dtype=object)  # one env of 512 reports a big info
    with pytest.raises(ProtocolError, match="filling"):
        merge_infos([{"x": np.zeros((1, 250_000)), "_x": np.ones(1, bool)}, {}], [1, 511])
    assert list(merge_infos([{"b": lonely[:0], "a": 1}, {"c": 2, "a": 3}], [0, 1])) == ["b", "a", "c"]
    image = describe_as(gym.spaces.Box(0, 1, (1024, 1024), np.float64))
    description = parse_description(image)
    check_batch(description, 4, 256 << 20)
    with pytest.raises(ProtocolError, match="max_space_bytes"):
        check_batch(description, 16, 256 << 20)  # a within-budget space, copied per env past the budget


def test_per_address_limits_count_an_ipv6_64_as_one_client():
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:10.0.0.1") == "10.0.0.1" and address_key("10.0.0.1") == "10.0.0.1"

    class Client:
        host = "2001:db8:1:2::77"

    class Connection:
        client = Client()

    assert source_of(Connection()) == "2001:db8:1:2::/64"  # what the bad-key and admin-token limiters count by


def test_the_affinity_header_of_a_plain_key_is_slow_to_search():
    header = session_id_for("robotlab2024")
    assert header.startswith("ws-") and len(header) == 15 and header == session_id_for("robotlab2024")
    assert header[3:] != hashlib.sha256(b"robotlab2024").hexdigest()[:12]


def test_a_trainer_cannot_release_or_step_another_trainers_channel(watched):
    """Channel ids are small and guessable: a second trainer of the same workspace
    naming the bystander's channel is refused, and the bystander never notices."""
    ws = greeted(watched.relay, Hello(role="trainer", api_key=watched.bystander_key), "127.0.0.2")
    victim = watched.env.unwrapped.channel
    ws.send(control_frame(Release(channels=[victim])))  # ignored: not this trainer's channel
    assert request(ws, Op.STEP, victim, 2, 0)["code"] == "unknown_channel"
    assert request(ws, Op.CLOSE, victim, 3, None)["code"] == "unknown_channel"
    ws.close()


def test_a_frame_declaring_a_huge_length_before_the_hello_is_cut_off_unbuffered(watched):
    sock = tcp(watched.relay, "127.0.0.2")
    sock.sendall(UPGRADE + b"\r\n")
    assert sock.recv(4096).startswith(b"HTTP/1.1 101")
    sock.sendall(bytes([0x82, 0x80 | 127]) + (2**62).to_bytes(8, "big") + b"\0\0\0\0" + b"x" * 1000)
    assert closed_by_peer(sock, 10)  # 1009 at once: the relay never waits for (or buffers) 4 EiB
    sock.close()

"""Attack a live relay with random and mutated traffic; report crashes, memory
and what it cost a bystander.

Starts a real relay, a real simulator in the attackers' workspace (so fuzzed
requests reach a simulator) and one in a bystander's workspace, whose real
trainer steps CartPole throughout. First the bystander steps alone (the
baseline), then attacker threads run for the given time, each picking at
random one of:

* raw TCP bytes, and mutations of a valid WebSocket upgrade request;
* random and mutated hellos (a valid hello with bytes flipped, cut or spliced);
* an admitted trainer sending random frames: mutated valid requests and
  control messages, random kinds, ops, channels and seqs;
* an admitted simulator answering with random frames on random channels;
* pings it never reads the answers to, silent and half-sent requests.

Attackers come from many loopback addresses (127.0.9.x), as many hosts would.
At the end it prints whether every process survived, the relay's memory
before, during and after, and the bystander's step latency under attack
against its baseline (side by side in one run). Exits 1 on a crash, a failed
bystander step or an unmetered one.

    python bench/fuzz_relay.py --minutes 5
    python bench/fuzz_relay.py --seconds 20 --seed 7     # the test suite's short run
"""

from __future__ import annotations

import argparse
import random
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from websockets.frames import Frame, Opcode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from remoterl_ray.local import LocalRelay, rss_mb, start_relay, start_simulator  # noqa: E402
from remoterl_ray.protocol import codec  # noqa: E402
from remoterl_ray.protocol.frames import HEADER_SIZE, Kind, Op, pack, unpack_header  # noqa: E402
from remoterl_ray.protocol.messages import Hello, Open, Release, control_frame, encode_control  # noqa: E402
from remoterl_ray.relay.auth import workspace_for_key  # noqa: E402
from remoterl_ray.trainer.remote_env import RemoteEnv  # noqa: E402
from remoterl_ray.trainer.session import TrainerSession  # noqa: E402
from remoterl_ray.trainer.settings import TrainerSettings  # noqa: E402

UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


# -- what to send ---------------------------------------------------------------


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A random value of the kinds the codec carries, sometimes deeply nested."""
    pick = rng.random()
    if depth > 6 or pick < 0.35:
        return rng.choice([None, True, rng.randint(-(2**63), 2**64 - 1), rng.random() * 1e9, "x" * rng.randint(0, 40),
                           bytes(rng.randbytes(rng.randint(0, 40))), np.zeros(rng.randint(0, 8), np.float32)])  # fmt: skip
    if pick < 0.6:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    if pick < 0.75:
        return tuple(random_value(rng, depth + 1) for _ in range(rng.randint(0, 4)))
    return {rng.choice(["id", "op", "kwargs", "seed", "num_envs", "role", "k"]): random_value(rng, depth + 1)
            for _ in range(rng.randint(0, 5))}  # fmt: skip


def mutate(rng: random.Random, data: bytes) -> bytes:
    """Flip, cut, insert, duplicate or splice bytes of ``data``."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        how = rng.randrange(6)
        i = rng.randrange(len(out) + 1)
        if how == 0 and out:
            out[min(i, len(out) - 1)] = rng.randrange(256)
        elif how == 1:
            del out[i:]
        elif how == 2:
            out[i:i] = rng.randbytes(rng.randint(1, 16))
        elif how == 3:
            out[i:i] = out[i : i + rng.randint(1, 64)] * rng.randint(1, 50)
        elif how == 4:
            out[i:i] = rng.choice([b"\xc7\x00\x03", b"\x91" * 80, b"\xdd\xff\xff\xff\xff", b"\xc1", b"\xd4\x04\x00"])
        else:
            out = out[::-1] if rng.random() < 0.1 else out
    return bytes(out)


def valid_requests(rng: random.Random, channel: int) -> list[bytes]:
    return [
        pack(Kind.REQUEST, Op.MAKE, channel, rng.randint(1, 9), codec.packb({"id": "CartPole-v1", "kwargs": {}})),
        pack(Kind.REQUEST, Op.RESET, channel, rng.randint(1, 9), codec.packb({"seed": 1, "options": None})),
        pack(Kind.REQUEST, Op.STEP, channel, rng.randint(1, 9), codec.packb(1)),
        pack(Kind.REQUEST, Op.REGISTER, channel, 1, codec.packb({"id": "X-v0", "entry_point": "os:system"})),
        control_frame(Open(envs=rng.randint(1, 4)), seq=rng.randint(1, 9)),
        control_frame(Release(channels=[channel])),
    ]


# -- the attackers --------------------------------------------------------------


class Attack:
    def __init__(self, relay: LocalRelay, key: str, rng: random.Random, stop: threading.Event) -> None:
        self.relay = relay
        self.key = key
        self.rng = rng
        self.stop = stop
        self.counts: dict[str, int] = {}

    def source(self) -> str:
        return f"127.0.9.{self.rng.randint(1, 250)}"

    def tcp(self, timeout: float = 3.0) -> socket.socket:
        sock = socket.create_connection((self.relay.host, self.relay.port), timeout=timeout,
                                        source_address=(self.source(), 0))  # fmt: skip
        sock.settimeout(timeout)
        return sock

    def frame(self, payload: bytes, opcode: int = 0x2) -> bytes:
        """A masked client WebSocket frame."""
        return Frame(Opcode(opcode), payload).serialize(mask=True)

    def upgraded(self) -> socket.socket:
        sock = self.tcp()
        sock.sendall(UPGRADE)
        sock.recv(4096)
        return sock

    def admitted(self, role: str) -> socket.socket:
        sock = self.upgraded()
        sock.sendall(self.frame(control_frame(Hello(role=role, api_key=self.key, name="fuzz"))))
        return sock

    def drain(self, sock: socket.socket, seconds: float = 0.05) -> None:
        sock.settimeout(seconds)
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass

    # strategies: each opens its own connection(s), sends, and closes
    def raw_bytes(self) -> None:
        with self.tcp() as sock:
            sock.sendall(self.rng.randbytes(self.rng.randint(1, 4096)))
            self.drain(sock)

    def bad_upgrade(self) -> None:
        with self.tcp() as sock:
            sock.sendall(mutate(self.rng, UPGRADE))
            self.drain(sock)

    def bad_hello(self) -> None:
        with self.upgraded() as sock:
            hello = encode_control(Hello(role=self.rng.choice(["trainer", "simulator"]), api_key=self.key))
            payload = mutate(self.rng, hello) if self.rng.random() < 0.7 else codec.packb(random_value(self.rng))
            opcode = 0x1 if self.rng.random() < 0.1 else 0x2
            sock.sendall(self.frame(pack(Kind.CONTROL, Op.NONE, 0, 0, payload), opcode))
            self.drain(sock)

    def read_frame(self, sock: socket.socket) -> bytes:
        """One unmasked server frame's payload (the relay's answers)."""

        def exactly(n: int) -> bytes:
            data = b""
            while len(data) < n:
                chunk = sock.recv(n - len(data))
                if not chunk:
                    raise ConnectionError("closed")
                data += chunk
            return data

        head = exactly(2)
        size = head[1] & 0x7F
        if size == 126:
            size = int.from_bytes(exactly(2), "big")
        elif size == 127:
            size = int.from_bytes(exactly(8), "big")
        return exactly(size)

    def open_channel(self, sock: socket.socket) -> int:
        """Open a channel on the attackers' real simulator; its id (or a guess)."""
        sock.sendall(self.frame(control_frame(Open(envs=1), seq=1)))
        sock.settimeout(2.0)
        for _ in range(4):
            payload = self.read_frame(sock)
            if len(payload) >= HEADER_SIZE and unpack_header(payload).kind == Kind.CONTROL and unpack_header(payload).seq == 1:
                shards = codec.unpackb(payload[HEADER_SIZE:]).get("shards") or [{}]
                return int(shards[0].get("channel", 0))
        return self.rng.randint(1, 400)

    def trainer_frames(self) -> None:
        with self.admitted("trainer") as sock:
            self.read_frame(sock)  # the welcome
            opened = self.open_channel(sock)
            channel = opened if self.rng.random() < 0.8 else self.rng.randint(1, 400)
            if self.rng.random() < 0.5:  # a real env to aim at
                sock.sendall(self.frame(valid_requests(self.rng, channel)[0]))
            for _ in range(self.rng.randint(1, 40)):
                choice = self.rng.random()
                if choice < 0.5:
                    data = mutate(self.rng, self.rng.choice(valid_requests(self.rng, channel)))
                elif choice < 0.8:
                    body = codec.packb(random_value(self.rng)) if self.rng.random() < 0.8 else self.rng.randbytes(64)
                    data = pack(self.rng.choice(list(Kind)), self.rng.choice(list(Op)), channel, self.rng.randint(0, 50), body)
                else:
                    data = self.rng.randbytes(self.rng.randint(0, 64))
                sock.sendall(self.frame(data, 0x1 if self.rng.random() < 0.03 else 0x2))
            self.drain(sock, 0.2)

    def simulator_frames(self) -> None:
        with self.admitted("simulator") as sock:
            for _ in range(self.rng.randint(1, 30)):
                kind = self.rng.choice([Kind.RESPONSE, Kind.ERROR, Kind.CONTROL, Kind.REQUEST])
                body = codec.packb(random_value(self.rng)) if self.rng.random() < 0.8 else self.rng.randbytes(32)
                sock.sendall(self.frame(pack(kind, self.rng.choice(list(Op)), self.rng.randint(0, 400),
                                             self.rng.randint(0, 400), body)))  # fmt: skip
            self.drain(sock, 0.2)

    def unread_pings(self) -> None:
        with self.upgraded() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            ping = self.frame(b"p" * 125, 0x9)
            try:
                for _ in range(self.rng.randint(100, 3000)):
                    sock.sendall(ping)
            except OSError:
                pass

    def silent(self) -> None:
        with self.tcp() as sock:
            sock.sendall(UPGRADE[: self.rng.randint(0, len(UPGRADE) - 1)])
            self.stop.wait(self.rng.random() * 2)

    def run(self) -> None:
        strategies: list[Callable[[], None]] = [
            self.raw_bytes, self.bad_upgrade, self.bad_hello, self.bad_hello, self.trainer_frames,
            self.trainer_frames, self.simulator_frames, self.unread_pings, self.silent,
        ]  # fmt: skip
        while not self.stop.is_set():
            strategy = self.rng.choice(strategies)
            try:
                strategy()
            except OSError:
                pass  # refused, reset or timed out: all fine outcomes
            self.counts[strategy.__name__] = self.counts.get(strategy.__name__, 0) + 1


# -- the run ----------------------------------------------------------------------


class Bystander:
    """A real trainer stepping CartPole on a real simulator, timing each step."""

    def __init__(self, relay: LocalRelay, key: str) -> None:
        self.relay = relay
        self.key = key
        self.session = TrainerSession(TrainerSettings(relay_url=relay.url, api_key=key, timeout=30.0))
        if self.session.links.wait_for_simulators(1, 30) < 1:
            raise RuntimeError("the bystander's simulator did not come online")
        self.env = RemoteEnv(self.session, "CartPole-v1")
        self.env.reset(seed=0)
        self.steps = 0
        self.failures: list[str] = []

    def metered(self) -> int:
        workspace = self.relay.stats()["workspaces"].get(workspace_for_key(self.key), {})
        return sum(t["env_steps"] for t in workspace.get("trainers", []))

    def step_for(self, seconds: float) -> np.ndarray:
        latencies = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            try:
                _, _, terminated, truncated, _ = self.env.step(self.env.action_space.sample())
                self.steps += 1
                if terminated or truncated:
                    self.env.reset()
            except Exception as exc:  # reported, not raised: the run goes on to say what else broke
                self.failures.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.1)
                continue
            latencies.append(time.perf_counter() - started)
        return np.asarray(latencies)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--attackers", type=int, default=3, help="attacker threads")
    args = parser.parse_args()
    duration = args.seconds if args.seconds is not None else 60 * (args.minutes if args.minutes is not None else 1)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    print(f"fuzzing for {duration:.0f} s with seed {seed} and {args.attackers} attackers", flush=True)

    attacker_key, bystander_key = f"fuzz-{secrets.token_hex(6)}", f"calm-{secrets.token_hex(6)}"
    relay = start_relay(api_keys=[attacker_key, bystander_key], extra_args=["--handshake-timeout", "2"])
    sims = [start_simulator(relay.url, key) for key in (attacker_key, bystander_key)]
    stop = threading.Event()
    problems: list[str] = []
    try:
        relay.wait_for(bystander_key, "simulator", 1)
        bystander = Bystander(relay, bystander_key)
        calm = bystander.step_for(min(10.0, max(3.0, duration / 4)))
        rss_before = rss_mb(relay.process.pid)
        attacks = [Attack(relay, attacker_key, random.Random(seed + i), stop) for i in range(args.attackers)]
        threads = [threading.Thread(target=a.run, daemon=True) for a in attacks]
        for thread in threads:
            thread.start()
        peak = rss_before
        under_attack: list[np.ndarray] = []
        end = time.monotonic() + duration
        while time.monotonic() < end:
            under_attack.append(bystander.step_for(min(1.0, end - time.monotonic())))
            peak = max(peak, rss_mb(relay.process.pid))
            for name, proc in (("relay", relay.process), ("attackers' simulator", sims[0]), ("bystander's simulator", sims[1])):
                if not proc.alive():
                    problems.append(f"{name} exited with {proc.popen.returncode}:\n{proc.output()[-2000:]}")
            if problems:
                break
        stop.set()
        for thread in threads:
            thread.join(10)
        time.sleep(1)
        before_metering = bystander.metered()
        if before_metering != bystander.steps:
            problems.append(f"bystander took {bystander.steps} steps, the relay metered {before_metering}")
        if bystander.failures:
            problems.append(f"bystander steps failed {len(bystander.failures)} times: {bystander.failures[:3]}")
        attacked = np.concatenate([x for x in under_attack if len(x)] or [np.zeros(1)])
        rss_after = rss_mb(relay.process.pid)
        counts: dict[str, int] = {}
        for attack in attacks:
            for name, n in attack.counts.items():
                counts[name] = counts.get(name, 0) + n
        log_text = relay.process.output()
        print("attacks:", ", ".join(f"{name} {n}" for name, n in sorted(counts.items())))
        print(f"processes alive: relay {relay.process.alive()}, simulators {[s.alive() for s in sims]}")
        print(f"relay memory MiB: before {rss_before:.0f}, peak {peak:.0f}, after {rss_after:.0f}")
        print(f"relay log: {len(log_text.splitlines())} lines, {log_text.count('Traceback')} tracebacks")
        print(f"bystander: {bystander.steps} steps, {len(bystander.failures)} failed, {before_metering} metered")
        p50, p99 = (np.percentile(calm, q) * 1e3 for q in (50, 99))
        a50, a99 = (np.percentile(attacked, q) * 1e3 for q in (50, 99))
        print(f"bystander step ms: calm p50 {p50:.2f} p99 {p99:.2f}; under attack p50 {a50:.2f} p99 {a99:.2f}")
        print(f"ratio under attack / calm: p50 {a50 / p50:.2f}, p99 {a99 / p99:.2f}")
        if log_text.count("Traceback"):
            problems.append("the relay logged tracebacks")
        bystander.session.close()
    finally:
        stop.set()
        for sim in sims:
            sim.stop()
        relay.stop()
    for problem in problems:
        print("PROBLEM:", problem)
    print("ok" if not problems else f"{len(problems)} problem(s); seed {seed}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

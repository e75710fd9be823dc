"""Core path benchmark: local vs raw two-hop WebSocket forward vs remote via the relay.

Side by side in one run, on CartPole-v1, for n_envs in {1, 16, 64} and 1 or 2
simulator processes:

* local    -- ``gym.make`` (n=1) / ``SyncVectorEnv`` in this process;
* raw      -- the floor for Python WebSockets: this process sends the very bytes
              a remote step sends (one frame per simulator) to a plain
              ``websockets`` forwarder process, which passes them to echo
              processes that answer with the very bytes a remote step returns;
              no env, no protocol, no relay logic; the trainer and the echoes
              use the ``websockets`` synchronous client (a reader thread);
* raw-own  -- the same as raw, with remoterl's own client (``transport/websocket.py``,
              read in the caller's thread) at both ends, as remote uses;
* shard    -- ``SyncVectorEnv`` of one simulator's share of the envs (n / s), the
              env work each simulator does per step (they step in parallel);
* remote   -- ``remoterl`` trainer -> embedded relay -> simulator processes.

Prints step latency p50/p99, env-steps/s, bytes on the trainer's socket per
env-step (payload + our header + WebSocket framing, both directions), and the
ratios the targets are stated in.

    python bench/core_path.py            # full run (~4 minutes on 2 cores)
    python bench/core_path.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import functools
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

import remoterl_ray
from remoterl_ray.local import free_port, start_relay, start_simulator
from remoterl_ray.protocol import codec
from remoterl_ray.protocol.frames import Kind, Op, pack

LOCAL_MAKE, LOCAL_MAKE_VEC = gym.make, gym.make_vec


@dataclass
class Result:
    name: str
    n_envs: int
    sims: int
    latencies: np.ndarray
    bytes_per_env_step: float | None = None

    @property
    def p50_ms(self) -> float:
        return float(np.percentile(self.latencies, 50) * 1e3)

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(self.latencies, 99) * 1e3)

    @property
    def env_steps_per_s(self) -> float:
        return self.n_envs * len(self.latencies) / float(np.sum(self.latencies))


def ws_overhead(size: int, client: bool) -> int:
    """RFC 6455 frame header bytes for a binary message of ``size`` bytes."""
    header = 2 + (2 if 126 <= size < 65536 else 8 if size >= 65536 else 0)
    return header + (4 if client else 0)


def timed(step, steps: int) -> np.ndarray:
    out = np.empty(steps)
    clock = time.perf_counter
    for i in range(steps):
        t0 = clock()
        step()
        out[i] = clock() - t0
    return out


# -- the three paths, each a "step once" callable plus a teardown ---------------


def stepper(make, make_vec, n_envs: int):
    """A "step once" callable over a CartPole env (n = 1) or vector env, and the env."""
    rng = np.random.default_rng(0)
    if n_envs == 1:
        env = make("CartPole-v1")
        env.reset(seed=0)

        def step() -> None:
            _, _, term, trunc, _ = env.step(int(rng.integers(2)))
            if term or trunc:
                env.reset()
    else:
        env = make_vec("CartPole-v1", num_envs=n_envs)
        env.reset(seed=0)

        def step() -> None:
            env.step(rng.integers(0, 2, size=n_envs))

    return step, env


def local_path(n_envs: int):
    step, env = stepper(LOCAL_MAKE, functools.partial(LOCAL_MAKE_VEC, vectorization_mode="sync"), n_envs)
    return step, env.close


# -- raw two-hop forward -------------------------------------------------------

FORWARDER = r'''
import asyncio, sys, websockets
async def main(port):
    trainer, sims = None, {}
    async def handler(ws):
        nonlocal trainer
        try:
            hello = await ws.recv()
            if hello == b"T":
                trainer = ws
                async for msg in ws:
                    await sims[msg[0]].send(msg)
            else:
                sims[hello[1]] = ws
                async for msg in ws:
                    await trainer.send(msg)
        except websockets.ConnectionClosed:
            pass
    async with websockets.serve(handler, "127.0.0.1", port, compression=None, max_size=None):
        print("ready", flush=True)
        await asyncio.Future()
asyncio.run(main(int(sys.argv[1])))
'''

ECHO = r'''
import sys
port, index, size, client = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
reply = bytes(size)
url = f"ws://127.0.0.1:{port}"
if client == "websockets":
    from websockets.sync.client import connect
    ws = connect(url, compression=None, max_size=None, legacy=True, proxy=None)
else:
    from remoterl_ray.transport.websocket import WebSocket
    ws = WebSocket.connect(url, max_size=None)
ws.send(b"S" + bytes([index]))
try:
    while True:
        ws.recv()
        ws.send(reply)
except Exception:
    pass
'''


def real_frames(n_envs: int, sims: int) -> tuple[list[bytes], list[int]]:
    """The exact request frames and response sizes a remote CartPole step uses."""
    sizes = [n_envs // sims + (1 if i < n_envs % sims else 0) for i in range(sims)]
    requests, replies = [], []
    env = LOCAL_MAKE("CartPole-v1") if n_envs == 1 else None
    for i, size in enumerate(sizes):
        if env is not None:
            env.reset(seed=0)
            action: object = 1
            result = env.step(1)
        else:
            vec = LOCAL_MAKE_VEC("CartPole-v1", num_envs=size, vectorization_mode="sync")
            vec.reset(seed=0)
            action = np.ones(size, dtype=np.int64)
            result = vec.step(action)
        first = bytes([i]) + pack(Kind.REQUEST, Op.STEP, 1, 1, codec.packb(action))[1:]  # byte 0 routes
        requests.append(first)
        replies.append(len(pack(Kind.RESPONSE, Op.STEP, 1, 1, codec.packb(result))))
    return requests, replies


def raw_path(n_envs: int, sims: int, client: str):
    """``client``: "websockets" (its synchronous client) or "own" (``transport/websocket.py``)."""
    from websockets.sync.client import connect

    from remoterl_ray.transport.websocket import WebSocket

    port = free_port()
    forwarder = subprocess.Popen([sys.executable, "-c", FORWARDER, str(port)], stdout=subprocess.PIPE)
    assert forwarder.stdout is not None and forwarder.stdout.readline().strip() == b"ready"
    requests, reply_sizes = real_frames(n_envs, sims)
    url = f"ws://127.0.0.1:{port}"
    if client == "websockets":
        trainer = connect(url, compression=None, max_size=None, legacy=True, proxy=None)
    else:
        trainer = WebSocket.connect(url, max_size=None)
    trainer.send(b"T")
    echoes = [subprocess.Popen([sys.executable, "-c", ECHO, str(port), str(i), str(reply_sizes[i]), client])
              for i in range(sims)]

    def step() -> None:
        for frame in requests:
            trainer.send(frame)
        for _ in requests:
            trainer.recv(timeout=10)

    def close() -> None:
        trainer.close()
        for proc in (*echoes, forwarder):
            proc.kill()
            proc.wait()

    time.sleep(1.0)  # let the echo processes connect
    wire = sum(len(f) + ws_overhead(len(f), True) for f in requests)
    wire += sum(size + ws_overhead(size, False) for size in reply_sizes)
    return step, close, wire / n_envs


# -- remote via the embedded relay -------------------------------------------


def remote_path(relay, key: str, n_envs: int, sims: int):
    assert remoterl_ray.init(key, relay_url=relay.url, num_workers=sims,
                             num_env_runners=max(1, -(-n_envs // sims)))
    step, env = stepper(gym.make, functools.partial(gym.make_vec, vectorization_mode="sync"), n_envs)  # remote
    if n_envs > 1:
        assert len(env.shard_sizes) == sims, env.shard_sizes
    rng = np.random.default_rng(1)

    def bytes_per_env_step() -> float:
        """From one extra, counted batch of steps with no reset in it."""
        c = remoterl_ray.current_session().links.conn.counters
        before = (c.bytes_sent, c.frames_sent, c.bytes_received, c.frames_received)
        counted = 0
        env.reset(seed=1)
        for _ in range(100):
            if n_envs == 1:
                _, _, term, trunc, _ = env.step(0)
                counted += 1
                if term or trunc:
                    break
            else:
                env.step(rng.integers(0, 2, size=n_envs))
                counted += 1
        sent, nsent = c.bytes_sent - before[0], c.frames_sent - before[1]
        recv, nrecv = c.bytes_received - before[2], c.frames_received - before[3]
        wire = sent + nsent * ws_overhead(sent // max(nsent, 1), True)
        wire += recv + nrecv * ws_overhead(recv // max(nrecv, 1), False)
        return wire / (counted * n_envs)

    def close() -> None:
        env.close()
        remoterl_ray.shutdown()

    return step, close, bytes_per_env_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few steps: a smoke run, not a measurement")
    args = parser.parse_args()
    steps = {1: 3000, 16: 1500, 64: 800}  # per path and config, split over the rounds
    rounds, warmup = 10, 100
    if args.quick:
        steps, rounds, warmup = {1: 60, 16: 40, 64: 20}, 2, 5
    configs = [(n, s) for n in steps for s in ((1,) if n == 1 else (1, 2))]

    key = "bench-" + secrets.token_hex(6)
    relay = start_relay(api_keys=[key])
    procs = [start_simulator(relay.url, key) for _ in range(2)]
    results: dict[tuple[str, int, int], Result] = {}
    try:
        relay.wait_for(key, "simulator", 2, timeout=60)
        for n, s in configs:  # the relay places n envs on s of the 2 simulators
            local_step, local_close = local_path(n)
            shard_step, shard_close = local_path(-(-n // s))  # one simulator's own env work, in parallel
            raw_step, raw_close, raw_bytes = raw_path(n, s, "websockets")
            own_step, own_close, _ = raw_path(n, s, "own")
            remote_step, remote_close, remote_bytes = remote_path(relay, key, n, s)
            paths = {"local": local_step, "raw": raw_step, "raw-own": own_step, "remote": remote_step}
            if s > 1:
                paths["shard"] = shard_step
            lat: dict[str, list[np.ndarray]] = {name: [] for name in paths}
            for step in paths.values():
                timed(step, warmup)
            for _ in range(rounds):  # interleaved, so drift on a shared machine hits all three alike
                for name, step in paths.items():
                    lat[name].append(timed(step, steps[n] // rounds))
            bytes_remote = remote_bytes()
            local_close()
            shard_close()
            raw_close()
            own_close()
            remote_close()
            if s == 1 or ("local", n, 0) not in results:
                results[("local", n, 0)] = Result("local", n, 0, np.concatenate(lat["local"]))
            results[("raw", n, s)] = Result("raw", n, s, np.concatenate(lat["raw"]), raw_bytes)
            results[("raw-own", n, s)] = Result("raw-own", n, s, np.concatenate(lat["raw-own"]), raw_bytes)
            if s > 1:
                results[("shard", n, s)] = Result("shard", -(-n // s), 0, np.concatenate(lat["shard"]))
            results[("remote", n, s)] = Result("remote", n, s, np.concatenate(lat["remote"]), bytes_remote)
    finally:
        for proc in procs:
            proc.stop()
        relay.stop()

    header = f"{'path':<8}{'envs':>5}{'sims':>5}{'p50 ms':>9}{'p99 ms':>9}{'env-steps/s':>13}{'B/env-step':>12}"
    print(header)
    print("-" * len(header))
    for (name, n, s), r in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        b = f"{r.bytes_per_env_step:.1f}" if r.bytes_per_env_step is not None else "-"
        print(f"{name:<8}{r.n_envs:>5}{r.sims:>5}{r.p50_ms:>9.3f}{r.p99_ms:>9.3f}{r.env_steps_per_s:>13,.0f}{b:>12}")
    print()
    print("ratios (targets in brackets)")
    rem, raw, own = results[("remote", 1, 1)], results[("raw", 1, 1)], results[("raw-own", 1, 1)]
    print(f"  1 env:           remote p50 / raw p50 = {rem.p50_ms / raw.p50_ms:.2f}   [<= 1.1]")
    print(f"  1 env:           remote p50 / raw-own p50 = {rem.p50_ms / own.p50_ms:.2f}")
    print(f"  1 env:           raw-own p50 / raw p50 = {own.p50_ms / raw.p50_ms:.2f}   [<= 0.8]")
    for n in (16, 64):
        for s in (1, 2):
            rem, raw = results[("remote", n, s)], results[("raw", n, s)]
            print(f"  {n} envs, {s} sims: remote p50 / raw p50 = {rem.p50_ms / raw.p50_ms:.2f}")
    for n in (16, 64):
        for s in (1, 2):
            rem, loc = results[("remote", n, s)], results[("local", n, 0)]
            target = "   [>= 0.8]" if (n, s) == (64, 2) else ""
            print(f"  {n} envs, {s} sims: remote / local env-steps/s = "
                  f"{rem.env_steps_per_s / loc.env_steps_per_s:.2f}{target}")
    rem, own, shard = results[("remote", 64, 2)], results[("raw-own", 64, 2)], results[("shard", 64, 2)]
    print(f"  64 envs, 2 sims: remote p50 - raw-own p50 - one shard's env p50 = "
          f"{rem.p50_ms - own.p50_ms - shard.p50_ms:.3f} ms   [<= 0.15]")
    print(f"  64 envs, 2 sims: bytes per env-step = {results[('remote', 64, 2)].bytes_per_env_step:.1f}   [<= 64]")


if __name__ == "__main__":
    main()

"""Placement benchmark: what an ``open`` costs in a crowded workspace, and what
a workspace opening in a loop costs everyone else.

Side by side in one run:

* placement -- the switchboard alone, in this process: one ``open`` of one env
               in a workspace of N idle simulators declaring ``max_envs=1``
               (the costliest shape), N = 1,000 and 10,000, and the heap
               entries it looked at (flat in N is the point);
* open      -- through a real relay: a raw trainer's ``open`` round trip (send
               ``Open``, read ``Opened``) and then its ``release`` (until a
               ``Locate`` sent after it is answered) in a workspace of 1,000
               idle ``max_envs=1`` simulator connections (bench/idle_peers.py):
               one env, every simulator, half of them spilled onto, a third;
* bystander -- a real trainer of another workspace stepping CartPole on its
               own simulator process: step round trip p50/p99 with no load, and
               while a trainer of another workspace (a separate process) opens
               and releases in a loop: one env at a time in a workspace of ONE
               simulator (the control: same request rate, nothing to search),
               one env at a time among the 1,000, and the large shapes among the
               1,000 (1,000 channels made and closed each time, mostly frames
               to 1,000 connections). Interleaved round by round.

    python bench/placement.py            # full run (~3 minutes on 2 cores)
    python bench/placement.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from websockets.sync.client import connect

from stepping import pct, step_latencies

from remoterl_ray.local import LocalProcess, start_relay, start_simulator
from remoterl_ray.protocol.frames import HEADER_SIZE, Kind, unpack_header
from remoterl_ray.protocol.messages import Hello, Locate, Open, Release, control_frame, parse_control
from remoterl_ray.relay.switchboard import Peer, Switchboard
from remoterl_ray.trainer.remote_env import RemoteEnv
from remoterl_ray.trainer.session import TrainerSession
from remoterl_ray.trainer.settings import TrainerSettings

HERE = Path(__file__).parent


def large_shapes(crowd: int) -> list[tuple[int, int]]:
    """(envs, per_simulator), each released after: one env; every simulator; every
    simulator with half reached by spilling (per_simulator=2 on max_envs=1); a third."""
    return [(1, 1), (crowd, 1), (crowd, 2), (max(1, crowd // 3), 1)]


# name -> (which workspace, what it asks for); None means large_shapes(crowd)
LOADS: dict[str, tuple[str, list[tuple[int, int]] | None]] = {
    "1-env opens, 1-simulator workspace": ("solo", [(1, 1)]),
    "1-env opens, crowded workspace": ("crowd", [(1, 1)]),
    "large opens, crowded workspace": ("crowd", None),
}




# -- the switchboard alone ----------------------------------------------------


async def _noop(frame: bytes) -> None:
    return None


def placement_cost(sims: int, opens: int) -> tuple[float, float]:
    """(µs per open of one env, heap entries looked at per open) with ``sims`` idle
    ``max_envs=1`` simulators; each open is released before the next."""
    board = Switchboard()
    trainer = Peer(id="t", role="trainer", workspace="w", name="", send_raw=_noop)

    async def run() -> tuple[float, float]:
        await board.join(trainer)
        for i in range(sims):
            await board.join(Peer(id=f"s{i}", role="simulator", workspace="w", name="", send_raw=_noop, max_envs=1))
        pool = board.workspaces["w"].pool
        request = Open(envs=1, per_simulator=1)
        spent, before = 0.0, pool.examined
        for _ in range(opens):
            started = time.perf_counter()
            opened = await board.open(trainer, request)
            spent += time.perf_counter() - started
            await board.release(trainer, [s.channel for s in opened.shards])
        return spent / opens * 1e6, (pool.examined - before) / opens

    return asyncio.run(run())


# -- a raw trainer ------------------------------------------------------------


class RawTrainer:
    def __init__(self, url: str, key: str) -> None:
        self.ws = connect(f"{url}/ws", compression=None, max_size=None, proxy=None, open_timeout=30, legacy=True)
        self.ws.send(control_frame(Hello(role="trainer", api_key=key, name="bench")))
        self.ws.recv(timeout=30)  # welcome
        self.seq = 0

    def ask(self, message: Any) -> tuple[float, bytes]:
        """(seconds to the answer, the answer frame) for a control request."""
        self.seq += 1
        started = time.perf_counter()
        self.ws.send(control_frame(message, self.seq))
        while True:
            frame = self.ws.recv(timeout=60)
            if unpack_header(frame).seq == self.seq:
                return time.perf_counter() - started, frame

    def open(self, envs: int, per_simulator: int) -> tuple[float, list[int]]:
        """(seconds from sending ``Open`` to reading its answer, the channels)."""
        elapsed, frame = self.ask(Open(envs=envs, per_simulator=per_simulator))
        if unpack_header(frame).kind != Kind.CONTROL:
            raise RuntimeError(f"open({envs}, {per_simulator}) refused: {bytes(frame[HEADER_SIZE:])!r}")
        opened = parse_control(memoryview(frame)[HEADER_SIZE:])
        if sum(s.envs for s in opened.shards) != envs:
            raise RuntimeError(f"asked for {envs} envs, got {opened.shards}")
        return elapsed, [s.channel for s in opened.shards]

    def release(self, channels: list[int]) -> float:
        """Seconds until the relay has closed ``channels``: a release has no answer,
        so a ``Locate`` sent right after it times it (answered once it is done)."""
        started = time.perf_counter()
        self.ws.send(control_frame(Release(channels=channels)))
        self.ask(Locate())
        return time.perf_counter() - started

    def open_and_release(self, envs: int, per_simulator: int) -> float:
        """Seconds the open took; what it got is released without waiting."""
        elapsed, channels = self.open(envs, per_simulator)
        self.ws.send(control_frame(Release(channels=channels)))
        return elapsed

    def close(self) -> None:
        self.ws.close()


def churn_process(url: str, keys: dict[str, str], crowd: int) -> None:
    """``--churn``: open and release in a loop while stdin names a load (a key of
    LOADS); on ``pause`` print one JSON line with what that stretch did; stop at
    end of input."""
    trainers = {workspace: RawTrainer(url, key) for workspace, key in keys.items()}
    load: list[str | None] = [None]
    changed = threading.Condition()

    def commands() -> None:
        for line in sys.stdin:
            with changed:
                load[0] = None if line.strip() == "pause" else line.strip()
                changed.notify()
        with changed:
            load[0] = "end"
            changed.notify()

    threading.Thread(target=commands, daemon=True).start()
    print("ready", flush=True)
    while True:
        with changed:
            changed.wait_for(lambda: load[0] is not None)
            name = load[0]
        if name == "end":
            break
        workspace, shapes = LOADS[name]
        shapes = shapes or large_shapes(crowd)
        times: list[float] = []
        while load[0] == name:
            envs, per_simulator = shapes[len(times) % len(shapes)]
            times.append(trainers[workspace].open_and_release(envs, per_simulator))
        if load[0] != "end":
            stretch = {"opens": len(times), "p50_ms": pct(times, 50) if times else 0.0}
            print(json.dumps({**stretch, "p99_ms": pct(times, 99) if times else 0.0}), flush=True)
    for trainer in trainers.values():
        trainer.close()


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], timeout)
    if not readable:
        raise TimeoutError(f"no answer from {proc.args} after {timeout}s")
    return proc.stdout.readline().strip()


def hold_idle(url: str, key: str, count: int) -> subprocess.Popen:
    """``count`` idle max_envs=1 simulator connections of ``key`` until stdin closes."""
    return subprocess.Popen(
        [sys.executable, str(HERE / "idle_peers.py"), url, key, str(count), "1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crowd", type=int, default=1000, help="idle max_envs=1 simulators in the crowded workspace")
    parser.add_argument("--steps", type=int, default=1000, help="bystander steps per phase per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="a short smoke run, not a measurement")
    parser.add_argument("--churn", nargs=4, metavar=("URL", "CROWD_KEY", "SOLO_KEY", "CROWD"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.churn:
        url, crowd_key, solo_key, crowd = opts.churn
        churn_process(url, {"crowd": crowd_key, "solo": solo_key}, int(crowd))
        return
    if opts.quick:
        opts.steps, opts.rounds = 100, 1

    print("placement alone (switchboard in this process), one env per open:")
    print(f"  {'simulators':>10} {'us per open':>12} {'heap entries looked at':>23}")
    for sims in (1_000, 10_000):
        micros, looked = placement_cost(sims, 200 if opts.quick else 2_000)
        print(f"  {sims:>10,} {micros:12.1f} {looked:23.1f}")

    crowd_key, solo_key, key = (secrets.token_hex(8) for _ in range(3))
    relay = start_relay(api_keys=[crowd_key, solo_key, key])
    procs: list[LocalProcess] = [relay.process, start_simulator(relay.url, key)]
    holders = [hold_idle(relay.url, crowd_key, opts.crowd), hold_idle(relay.url, solo_key, 1)]
    churner: subprocess.Popen | None = None
    session: TrainerSession | None = None
    try:
        for holder, count in zip(holders, (opts.crowd, 1)):
            line = read_line(holder, 300)
            if not line.startswith(f"ready {count} "):
                raise RuntimeError(f"idle connections did not open: {line!r}")
        relay.wait_for(crowd_key, "simulator", opts.crowd, timeout=60)

        print(f"\nround trips through the relay, {opts.crowd} idle max_envs=1 simulators in the workspace:")
        print(f"  {'envs':>5} {'per_sim':>7} {'shards':>6} {'open p50 ms':>11} {'p99 ms':>7}"
              f" {'release p50 ms':>14} {'p99 ms':>7}")
        trainer = RawTrainer(relay.url, crowd_key)
        for envs, per_simulator in large_shapes(opts.crowd):
            opens, releases = [], []
            for _ in range(20 if opts.quick else 100):
                elapsed, channels = trainer.open(envs, per_simulator)
                opens.append(elapsed)
                releases.append(trainer.release(channels))
            print(f"  {envs:>5} {per_simulator:>7} {envs:>6} {pct(opens, 50):11.3f} {pct(opens, 99):7.3f}"
                  f" {pct(releases, 50):14.3f} {pct(releases, 99):7.3f}")
        trainer.close()

        session = TrainerSession(TrainerSettings(relay_url=relay.url, api_key=key))
        if session.links.wait_for_simulators(1, 60) < 1:
            raise RuntimeError("the bystander's simulator did not come online")
        env = RemoteEnv(session, "CartPole-v1")
        env.reset(seed=0)
        step_latencies(env, 200)  # warm up
        churner = subprocess.Popen(
            [sys.executable, __file__, "--churn", relay.url, crowd_key, solo_key, str(opts.crowd)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert churner.stdin is not None
        if read_line(churner, 60) != "ready":
            raise RuntimeError("the churning trainer did not start")
        quiet: list[float] = []
        loaded: dict[str, list[float]] = {name: [] for name in LOADS}
        stretches: dict[str, list[dict]] = {name: [] for name in LOADS}
        for _ in range(opts.rounds):
            quiet += step_latencies(env, opts.steps)
            for name in LOADS:
                churner.stdin.write(f"{name}\n")
                churner.stdin.flush()
                loaded[name] += step_latencies(env, opts.steps)
                churner.stdin.write("pause\n")
                churner.stdin.flush()
                stretches[name].append(json.loads(read_line(churner, 120)))

        print(f"\nbystander workspace, single-env CartPole step, {opts.rounds} interleaved rounds x {opts.steps} steps")
        print(f"  {'another workspace meanwhile':<36} {'p50 ms':>7} {'p99 ms':>7} {'p50 x':>6} {'p99 x':>6}"
              f" {'its opens':>9} {'open p50 ms':>11}")
        q50, q99 = pct(quiet, 50), pct(quiet, 99)
        print(f"  {'nothing':<36} {q50:7.3f} {q99:7.3f} {1:6.2f} {1:6.2f}")
        for name, values in loaded.items():
            opens = sum(s["opens"] for s in stretches[name])
            open_p50 = float(np.median([s["p50_ms"] for s in stretches[name]]))
            print(f"  {name:<36} {pct(values, 50):7.3f} {pct(values, 99):7.3f} {pct(values, 50) / q50:6.2f}"
                  f" {pct(values, 99) / q99:6.2f} {opens:>9} {open_p50:11.3f}")
        print(f"  (large opens: {large_shapes(opts.crowd)}, each released before the next)")
    finally:
        if session is not None:
            session.close()
        for child in (churner, *holders):
            if child is not None:
                if child.stdin:
                    child.stdin.close()
                try:
                    child.wait(60)
                except subprocess.TimeoutExpired:
                    child.kill()
        for proc in reversed(procs):
            proc.stop(30)


if __name__ == "__main__":
    main()

"""Large observations: Atari Pong frames raw and compressed, and a 1 MB observation.

Side by side in one run, 2 simulator processes on the embedded relay:

* Pong, raw frames (210x160x3 uint8, ``ALE/Pong-v5`` with ``obs_type="rgb"``) and
  preprocessed ones (84x84 grey, 4 stacked: 4x84x84 uint8, built on the
  simulator), 16 and 64 envs: bytes on the trainer's socket per env-step, step
  latency p50/p99 and env-steps/s, with compression ``none``, ``lz4``,
  ``zstd`` and the default ``auto``; ``local`` is a ``SyncVectorEnv`` of the
  same envs in this process.
* A 1 MB float32 observation, one env: remote against the floor for Python
  WebSockets, a plain two-hop forward of the very same bytes (this process ->
  a ``websockets`` forwarder process -> an echo process and back, as in
  ``core_path.py``).

Prints the ratios the targets are stated in.

    python bench/large_obs.py            # full run (~4 minutes on 2 cores)
    python bench/large_obs.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
from core_path import ECHO, FORWARDER, Result, timed

from remoterl_ray.local import free_port, start_relay, start_simulator
from remoterl_ray.protocol import codec
from remoterl_ray.protocol.frames import Kind, Op, pack

from remoterl_ray.trainer.remote_env import RemoteEnv
from remoterl_ray.trainer.remote_vector_env import RemoteVectorEnv
from remoterl_ray.trainer.session import TrainerSession
from remoterl_ray.trainer.settings import TrainerSettings

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import large_obs_envs  # noqa: E402 - the same envs as the simulators make

# "module:id": Gymnasium imports the module (which registers the id) on either side.
PONG = {"raw": ("ale_py:ALE/Pong-v5", {"obs_type": "rgb"}), "84x84x4": ("large_obs_envs:PongDQN-v0", {})}
CODECS = ("none", "lz4", "zstd", "auto")
MEGABYTE = 1 << 20


def socket_bytes(session: TrainerSession) -> int:
    sent, received = session.links.byte_counts()
    return sent + received


def vector_stepper(env):
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    n = env.num_envs
    return lambda: env.step(rng.integers(0, 6, size=n))


def measure_pong(
    relay, key: str, sizes: tuple[int, ...], steps: int, rounds: int, warmup: int
) -> list[tuple[str, int, str, Result]]:
    out = []
    for kind, (env_id, kwargs) in PONG.items():
        for n in sizes:
            local_env = gym.make_vec(env_id, num_envs=n, vectorization_mode="sync", **kwargs)
            local_step = vector_stepper(local_env)
            remotes = {}
            for setting in CODECS:  # a session each: every env asks for its own compression
                session = TrainerSession(TrainerSettings(relay_url=relay.url, api_key=key, num_workers=2,
                                                         num_env_runners=n // 2, compression=setting, timeout=120))  # fmt: skip
                assert session.links.wait_for_simulators(2, 30) == 2
                env = RemoteVectorEnv(session, env_id, n, vectorization_mode="sync", **kwargs)
                assert env.shard_sizes == [n // 2, n // 2], env.shard_sizes
                step = vector_stepper(env)
                timed(step, warmup)
                before = socket_bytes(session)
                timed(step, 10)
                per_env_step = (socket_bytes(session) - before) / (10 * n)
                remotes[setting] = (step, env, session, per_env_step)
            lat: dict[str, list[np.ndarray]] = {name: [] for name in ("local", *CODECS)}
            timed(local_step, warmup)
            for _ in range(rounds):  # interleaved, so drift on a shared machine hits every path alike
                lat["local"].append(timed(local_step, steps // rounds))
                for setting, (step, *_rest) in remotes.items():
                    lat[setting].append(timed(step, steps // rounds))
            out.append((kind, n, "local", Result("local", n, 0, np.concatenate(lat["local"]))))
            for setting, (_step, env, session, per_env_step) in remotes.items():
                out.append((kind, n, setting, Result(setting, n, 2, np.concatenate(lat[setting]), per_env_step)))
                env.close()
                session.close()
            local_env.close()
    return out


def raw_megabyte(size: int):
    """The floor: the same request and answer bytes through a plain two-hop forward."""
    from websockets.sync.client import connect

    port = free_port()
    forwarder = subprocess.Popen([sys.executable, "-c", FORWARDER, str(port)], stdout=subprocess.PIPE)
    assert forwarder.stdout is not None and forwarder.stdout.readline().strip() == b"ready"
    env = large_obs_envs.MegabyteEnv(MEGABYTE)
    request = bytes([0]) + pack(Kind.REQUEST, Op.STEP, 1, 1, codec.packb(1))[1:]  # byte 0 routes
    reply = len(pack(Kind.RESPONSE, Op.STEP, 1, 1, codec.packb(list(env.step(1)))))
    trainer = connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None, legacy=True, proxy=None)
    trainer.send(b"T")
    echo = subprocess.Popen([sys.executable, "-c", ECHO, str(port), "0", str(reply), "websockets"])
    time.sleep(1.0)

    def step() -> None:
        trainer.send(request)
        trainer.recv(timeout=10)

    def close() -> None:
        trainer.close()
        for proc in (echo, forwarder):
            proc.kill()
            proc.wait()

    return step, close


def measure_megabyte(relay, key: str, steps: int, rounds: int, warmup: int) -> dict[str, Result]:
    raw_step, raw_close = raw_megabyte(MEGABYTE)
    session = TrainerSession(TrainerSettings(relay_url=relay.url, api_key=key))
    assert session.links.wait_for_simulators(1, 30) >= 1
    env = RemoteEnv(session, "large_obs_envs:Megabyte-v0", size=MEGABYTE)
    env.reset(seed=0)
    paths = {"raw": raw_step, "remote": lambda: env.step(1)}
    lat: dict[str, list[np.ndarray]] = {name: [] for name in paths}
    for step in paths.values():
        timed(step, warmup)
    for _ in range(rounds):
        for name, step in paths.items():
            lat[name].append(timed(step, steps // rounds))
    env.close()
    session.close()
    raw_close()
    return {name: Result(name, 1, 1, np.concatenate(parts)) for name, parts in lat.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few steps: a smoke run, not a measurement")
    args = parser.parse_args()
    sizes, steps, rounds, warmup, mb_steps = (16, 64), 200, 5, 10, 600
    if args.quick:
        sizes, steps, rounds, warmup, mb_steps = (4,), 10, 2, 2, 20

    key = "bench-" + secrets.token_hex(6)
    relay = start_relay(api_keys=[key])
    sim_env = {"PYTHONPATH": os.pathsep.join(p for p in (str(BENCH), os.environ.get("PYTHONPATH", "")) if p)}
    allow = ("ale_py", "large_obs_envs")
    procs = [start_simulator(relay.url, key, allow=allow, env=sim_env) for _ in range(2)]
    try:
        relay.wait_for(key, "simulator", 2, timeout=60)
        pong = measure_pong(relay, key, sizes, steps, rounds, warmup)
        megabyte = measure_megabyte(relay, key, mb_steps, rounds, warmup)
    finally:
        for proc in procs:
            proc.stop()
        relay.stop()

    header = f"{'obs':<9}{'envs':>5}{'path':>7}{'p50 ms':>9}{'p99 ms':>9}{'env-steps/s':>13}{'B/env-step':>12}"
    print(header)
    print("-" * len(header))
    for kind, n, name, r in pong:
        b = f"{r.bytes_per_env_step:,.0f}" if r.bytes_per_env_step is not None else "-"
        print(f"{kind:<9}{n:>5}{name:>7}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.env_steps_per_s:>13,.0f}{b:>12}")
    for name, r in megabyte.items():
        print(f"{'1 MB':<9}{1:>5}{name:>7}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.env_steps_per_s:>13,.0f}{'-':>12}")
    print()
    print("ratios (targets in brackets)")
    by = {(kind, n, name): r for kind, n, name, r in pong}
    for kind, raw_bytes in (("raw", 210 * 160 * 3), ("84x84x4", 4 * 84 * 84)):
        for setting in CODECS:
            r = by[(kind, sizes[-1], setting)]
            target = "   [<= 0.35]" if (kind, setting) == ("raw", "auto") else ""
            print(f"  Pong {kind}, {sizes[-1]} envs: bytes per env-step / raw frame, {setting:<5} = "
                  f"{r.bytes_per_env_step / raw_bytes:.3f}{target}")  # fmt: skip
    for kind in PONG:
        for n in sizes:
            rem, loc = by[(kind, n, "auto")], by[(kind, n, "local")]
            target = "   [>= 0.7]" if (kind, n) == ("84x84x4", 64) else ""
            print(f"  Pong {kind}, {n} envs on 2 sims: remote / local env-steps/s = "
                  f"{rem.env_steps_per_s / loc.env_steps_per_s:.2f}{target}")  # fmt: skip
    ratio = megabyte["remote"].env_steps_per_s / megabyte["raw"].env_steps_per_s
    print(f"  1 MB observation: remote / raw forward step time = {1 / ratio:.2f}   [<= 1.5]")


if __name__ == "__main__":
    main()

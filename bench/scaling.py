"""Scaling out: vector step efficiency from 1 to 16 simulators.

Each simulator hosts 4 envs whose step sleeps 5 ms (a stand-in for a physics
engine or a robot's control period); a sync vector env steps its envs in
turn, so one simulator's shard takes 4 x 5 ms = 20 ms per vector step, and
with the shards stepping in parallel that is also the ideal step time of the
whole vector env, however many simulators host it. Efficiency = ideal /
measured (median) step time, for 4 x n envs on n simulators, n = 1, 2, 4, 8,
16, all on this machine. What is lost is the trainer's and relay's work per
shard (one frame each way) and the simulators' wake-ups.

    python bench/scaling.py            # 200 steps per size (~1 minute)
    python bench/scaling.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

from remoterl_ray.local import start_relay, start_simulator
from remoterl_ray.trainer.remote_vector_env import RemoteVectorEnv
from remoterl_ray.trainer.session import TrainerSession
from remoterl_ray.trainer.settings import TrainerSettings

SUPPORT = Path(__file__).resolve().parents[1] / "tests" / "support"
sys.path.insert(0, str(SUPPORT))
DELAY = 0.005
ENVS_PER_SIMULATOR = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="vector steps per size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="simulator counts")
    parser.add_argument("--quick", action="store_true", help="a short smoke run, not a measurement")
    opts = parser.parse_args()
    if opts.quick:
        opts.steps, opts.sizes = 20, [1, 2]

    key = secrets.token_hex(8)
    relay = start_relay(api_keys=[key])
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(SUPPORT), os.environ.get("PYTHONPATH", "")) if p)}
    sims = [start_simulator(relay.url, key, allow=["remoterl_testenvs"], env=env) for _ in range(max(opts.sizes))]
    session = TrainerSession(TrainerSettings(relay_url=relay.url, api_key=key, num_env_runners=ENVS_PER_SIMULATOR))
    rows = []
    try:
        if session.links.wait_for_simulators(len(sims), 120) < len(sims):
            raise RuntimeError("the simulators did not all come online")
        ideal = ENVS_PER_SIMULATOR * DELAY
        local = local_step(opts.steps)  # one shard's own time on this machine (sleep overshoots a little)
        for n in opts.sizes:
            envs = RemoteVectorEnv(session, "remoterl_testenvs:Counter-v0", ENVS_PER_SIMULATOR * n,
                                   vectorization_mode="sync", delay=DELAY)  # fmt: skip
            assert envs.shard_sizes == [ENVS_PER_SIMULATOR] * n, envs.shard_sizes
            envs.reset(seed=0)
            actions = np.zeros(envs.num_envs, dtype=np.int64)  # CounterEnv ends at 150: action 0 never ends it
            for _ in range(10):
                envs.step(actions)  # warm up
            times = []
            for _ in range(opts.steps):
                start = time.perf_counter()
                envs.step(actions)
                times.append(time.perf_counter() - start)
            envs.close()
            median = float(np.median(times))
            rows.append((n, median, ideal / median, local / median))
    finally:
        session.close()
        for sim in sims:
            sim.stop(30)
        relay.stop()
    print(f"{ENVS_PER_SIMULATOR} envs per simulator, each step sleeping {DELAY * 1000:.0f} ms; "
          f"ideal vector step {ideal * 1000:.0f} ms, the same 4 envs stepped locally here {local * 1000:.2f} ms; "
          f"{opts.steps} steps per size")  # fmt: skip
    print(f"{'simulators':>10} {'envs':>5} {'step p50 ms':>12} {'efficiency':>11} {'vs local':>9}")
    for n, median, efficiency, vs_local in rows:
        print(f"{n:10d} {ENVS_PER_SIMULATOR * n:5d} {median * 1000:12.2f} {efficiency:11.2f} {vs_local:9.2f}")
    print(f"efficiency at {rows[-1][0]} simulators = {rows[-1][2]:.2f}   [>= 0.9 at 16]")


def local_step(steps: int) -> float:
    """Median step time of the 4 sleeping envs as one simulator's shard runs them, in this process."""
    import remoterl_testenvs  # noqa: F401 - registers Counter-v0

    envs = gym.make_vec("Counter-v0", num_envs=ENVS_PER_SIMULATOR, vectorization_mode="sync", delay=DELAY)
    envs.reset(seed=0)
    actions = np.zeros(ENVS_PER_SIMULATOR, dtype=np.int64)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        envs.step(actions)
        times.append(time.perf_counter() - start)
    envs.close()
    return float(np.median(times))


if __name__ == "__main__":
    main()

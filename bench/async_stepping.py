"""A near and a far simulator: lockstep ``step`` against EnvPool-style ``send``/``recv``.

One embedded relay on loopback. The near simulator dials it directly; the
far one through a user-space proxy (a process of its own) that holds every
chunk ``--delay`` seconds each way (40 ms round trip by default). A workspace with both hosts
16 CartPole envs as two shards of 8; two more workspaces host 8 envs on a
near simulator alone and on a far one alone. Interleaved rounds measure
env-steps per second of:

* near alone, far alone (lockstep ``step`` on one simulator each);
* both, lockstep ``step`` (every step waits for the far shard);
* both, ``recv(envs=8)``: each shard steps again as soon as it answers.

The figure of merit is ``recv`` / (near alone + far alone): 1.0 means the
far simulator no longer holds the near one back.

``--rllib`` adds the same four phases for RLlib env runners sampling with a
PPO module: ``RemoteEnvRunner`` (lockstep) and ``FirstReadyEnvRunner`` on
both simulators, and lockstep runners on the near and the far one alone.
"""

from __future__ import annotations

import argparse
import secrets
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from stepping import medians

from remoterl_ray.local import start_relay, start_simulator
from remoterl_ray.trainer.remote_vector_env import RemoteVectorEnv
from remoterl_ray.trainer.session import TrainerSession
from remoterl_ray.trainer.settings import TrainerSettings

PROXY = Path(__file__).resolve().parents[1] / "tests" / "support" / "latency_proxy.py"


def vector_env(url: str, key: str, num_envs: int, simulators: int) -> tuple[TrainerSession, RemoteVectorEnv]:
    session = TrainerSession(TrainerSettings(relay_url=url, api_key=key, num_env_runners=8))
    if session.links.wait_for_simulators(simulators, 60) < simulators:
        raise RuntimeError(f"{simulators} simulator(s) did not come online")
    env = RemoteVectorEnv(session, "CartPole-v1", num_envs, vectorization_mode="sync")
    env.reset(seed=0)
    return session, env


def lockstep(env: RemoteVectorEnv, seconds: float) -> float:
    actions = np.ones(env.num_envs, dtype=np.int64)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        env.step(actions)
        steps += env.num_envs
    return steps / (time.perf_counter() - start)


def first_come(env: RemoteVectorEnv, seconds: float, batch: int) -> float:
    env.send(np.ones(env.num_envs, dtype=np.int64))
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        ids = env.recv(envs=batch)[4]["env_id"]
        steps += len(ids)
        env.send(np.ones(len(ids), dtype=np.int64), ids)
    rate = steps / (time.perf_counter() - start)
    env.recv()  # what is still in flight
    return rate


def runner(url: str, key: str, num_envs: int, first_ready: bool = False) -> object:
    from ray.rllib.algorithms.ppo import PPOConfig

    from remoterl_ray.rllib import FirstReadyEnvRunner, RemoteEnvRunner, use_remote_env_runners

    cls = FirstReadyEnvRunner if first_ready else RemoteEnvRunner
    settings = TrainerSettings(relay_url=url, api_key=key, num_workers=2 if num_envs > 8 else 1, num_env_runners=8)
    config = PPOConfig().environment("CartPole-v1").env_runners(num_envs_per_env_runner=num_envs, env_runner_cls=cls)
    made = cls(config=use_remote_env_runners(config, settings))
    assert made.env.unwrapped.shard_sizes == [8] * (num_envs // 8), made.env.unwrapped.shard_sizes
    return made


def sampling(runner: object, seconds: float) -> float:
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        steps += sum(len(e) for e in runner.sample(num_timesteps=64, explore=True))  # type: ignore[attr-defined]
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--delay", type=float, default=0.02, help="seconds each way to the far simulator")
    parser.add_argument("--seconds", type=float, default=3.0, help="per phase per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a short smoke run, not a measurement")
    parser.add_argument("--rllib", action="store_true", help="also RLlib env runners, lockstep and first-ready")
    opts = parser.parse_args()
    if opts.quick:
        opts.seconds, opts.rounds = 0.5, 1

    both, near_key, far_key = (secrets.token_hex(8) for _ in range(3))
    relay = start_relay(api_keys=[both, near_key, far_key])
    procs, sessions = [relay.process], []
    # In a process of its own, so that carrying the far traffic costs the trainer nothing.
    proxy = subprocess.Popen([sys.executable, str(PROXY), "127.0.0.1", str(relay.port), str(opts.delay)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proxy.stdout is not None
        far_url = f"ws://127.0.0.1:{int(proxy.stdout.readline())}"
        try:
            for key, url in ((both, relay.url), (both, far_url), (near_key, relay.url), (far_key, far_url)):
                procs.append(start_simulator(url, key))
            envs = {}
            for name, key, count, sims in (("both", both, 16, 2), ("near", near_key, 8, 1), ("far", far_key, 8, 1)):
                session, envs[name] = vector_env(relay.url, key, count, sims)
                sessions.append(session)
            assert envs["both"].shard_sizes == [8, 8], envs["both"].shard_sizes
            runners = {}
            if opts.rllib:
                runners = {
                    "rllib near alone": runner(relay.url, near_key, 8),
                    "rllib far alone": runner(relay.url, far_key, 8),
                    "rllib lockstep": runner(relay.url, both, 16),
                    "rllib first-ready": runner(relay.url, both, 16, first_ready=True),
                }
            rates: dict[str, list[float]] = {"near alone": [], "far alone": [], "lockstep": [], "recv(envs=8)": []}
            rates.update({name: [] for name in runners})
            for _ in range(opts.rounds):
                rates["near alone"].append(lockstep(envs["near"], opts.seconds))
                rates["far alone"].append(lockstep(envs["far"], opts.seconds))
                rates["lockstep"].append(lockstep(envs["both"], opts.seconds))
                rates["recv(envs=8)"].append(first_come(envs["both"], opts.seconds, 8))
                for name, made in runners.items():
                    rates[name].append(sampling(made, opts.seconds))
        finally:
            for made in runners.values():
                made.stop()  # type: ignore[attr-defined]
            for session in sessions:
                session.close()
            for proc in reversed(procs):
                proc.stop(30)
    finally:
        if proxy.stdin:
            proxy.stdin.close()
        proxy.wait(30)
    median = medians(rates)
    alone = median["near alone"] + median["far alone"]
    print(f"16 CartPole envs, 8 near + 8 far ({2 * opts.delay * 1000:.0f} ms round trip), "
          f"{opts.rounds} interleaved rounds x {opts.seconds:.1f} s per phase")  # fmt: skip
    print(f"{'phase':16} {'env-steps/s':>12} {'/ (near + far alone)':>22}")
    for name, rate in median.items():
        print(f"{name:16} {rate:12,.0f} {rate / alone:22.2f}")
    print(f"recv / (near alone + far alone) = {median['recv(envs=8)'] / alone:.2f}   [>= 0.9]")
    if opts.rllib:
        apart = median["rllib near alone"] + median["rllib far alone"]
        print(f"RLlib first-ready / (near alone + far alone runners) = {median['rllib first-ready'] / apart:.2f}; "
              f"first-ready / lockstep = {median['rllib first-ready'] / median['rllib lockstep']:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()

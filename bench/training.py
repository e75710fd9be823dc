"""Training benchmark: PPO on CartPole to a mean return of 450, local envs vs
remote envs (embedded relay + 2 simulator processes), side by side in one run.

For SB3 (RL Zoo's CartPole settings, 16 envs) and RLlib (PPO, 2 env runners x
8 envs) it prints the wall time to reach the target, env-steps taken and
env-steps/s for both paths, and the remote/local wall-time ratio. Same seeds
on both paths; rounds alternate local and remote so drift hits both.

    python bench/training.py                  # SB3 and RLlib, 1 round (~6 minutes on 2 cores)
    python bench/training.py --rounds 2 --frameworks sb3
    python bench/training.py --quick          # smoke run: a tiny budget, no target
"""

from __future__ import annotations

import argparse
import statistics
from contextlib import nullcontext

import remoterl_ray
from remoterl_ray.demo import TrainResult, local_simulators, train_rllib, train_sb3

TARGET = 450.0
NUM_ENVS = 16
SIMULATORS = 2


def run(framework: str, remote: bool, *, timesteps: int, target: float) -> TrainResult:
    cluster = local_simulators(SIMULATORS) if remote else nullcontext(None)
    with cluster as served:
        if served is not None:
            url, key = served
            assert remoterl_ray.init(key, relay_url=url, num_workers=SIMULATORS, num_env_runners=NUM_ENVS // 2)
        try:
            if framework == "sb3":
                return train_sb3(num_envs=NUM_ENVS, timesteps=timesteps, target=target, evaluate=False)
            return train_rllib(num_envs=NUM_ENVS, timesteps=timesteps, target=target)
        finally:
            remoterl_ray.shutdown()


def remote_over_local(results: dict[bool, list]) -> tuple[float, float]:
    """Remote over local, of the median wall time to the target and of the median env-steps/s
    (``results[remote]``: runs with ``seconds`` and ``env_steps``)."""
    def median(remote: bool, value) -> float:
        return statistics.median(value(r) for r in results[remote])

    wall = median(True, lambda r: r.seconds) / median(False, lambda r: r.seconds)
    rate = median(True, lambda r: r.env_steps / r.seconds) / median(False, lambda r: r.env_steps / r.seconds)
    return wall, rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frameworks", nargs="+", default=["sb3", "rllib"], choices=["sb3", "rllib"])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny budget, for a smoke test")
    args = parser.parse_args()
    timesteps, target = (2_000, 1e9) if args.quick else (400_000, TARGET)
    if "rllib" in args.frameworks:
        import ray

        ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)  # once, outside the timings
    print(f"PPO on CartPole-v1 to mean return {target:g}; {NUM_ENVS} envs; remote = {SIMULATORS} simulators")
    header = f"{'framework':<9} {'path':<7} {'wall s':>8} {'env-steps':>10} {'env-steps/s':>12} {'return':>7}"
    for framework in args.frameworks:
        run(framework, False, timesteps=512, target=1e9)  # warm-up (torch, imports), not timed
        results: dict[bool, list[TrainResult]] = {False: [], True: []}
        for _ in range(args.rounds):
            for remote in (False, True):
                results[remote].append(run(framework, remote, timesteps=timesteps, target=target))
        print(header)
        for remote in (False, True):
            for r in results[remote]:
                path = "remote" if remote else "local"
                print(f"{framework:<9} {path:<7} {r.seconds:>8.1f} {r.env_steps:>10,} "
                      f"{r.env_steps / r.seconds:>12,.0f} {r.mean_return:>7.1f}")
        wall, rate = remote_over_local(results)
        print(f"{framework}: remote/local wall time to target {wall:.2f}x (target <= 1.25x); "
              f"remote/local env-steps/s {rate:.2f}x\n")


if __name__ == "__main__":
    main()

"""Multi-agent training benchmark: RLlib PPO on RLlib's multi-agent CartPole (2 agents,
one policy each) until every agent's mean return reaches 400, local envs vs remote
envs (embedded relay + 2 simulator processes), side by side in one run.

Prints, for both paths, the wall time to reach the target, env-steps taken and
env-steps/s, and the remote/local wall-time ratio. The same config and seed on both
paths (an unchanged RLlib config; the remote path only calls ``remoterl_ray.init``
first); rounds alternate local and remote so drift hits both.

    python bench/multi_agent.py               # 1 round (~8 minutes on 2 cores)
    python bench/multi_agent.py --rounds 2
    python bench/multi_agent.py --quick       # smoke run: a tiny budget, no target
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from dataclasses import dataclass

import remoterl_ray
from training import remote_over_local  # bench/, beside this script

from remoterl_ray.demo import local_simulators

TARGET = 400.0
AGENTS = 2
SIMULATORS = 2
ENVS_PER_RUNNER = 8
ALLOW = ("ray.rllib.examples.envs.classes.multi_agent",)


@dataclass
class Result:
    seconds: float
    env_steps: int
    returns: dict  # mean return per agent at the end
    iterations: int


def config():
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.examples.envs.classes.multi_agent import MultiAgentCartPole

    return (
        PPOConfig()
        .environment(MultiAgentCartPole, env_config={"num_agents": AGENTS})
        .multi_agent(policies={f"p{i}" for i in range(AGENTS)}, policy_mapping_fn=lambda aid, *a, **kw: f"p{aid}")
        .env_runners(num_env_runners=2, num_envs_per_env_runner=ENVS_PER_RUNNER, num_cpus_per_env_runner=1)
        .training(lr=3e-4, num_epochs=6, vf_loss_coeff=0.01, train_batch_size_per_learner=4000)
        .debugging(seed=0)
    )


def train(*, timesteps: int, target: float) -> Result:
    started = time.perf_counter()
    algo = config().build_algo()
    returns: dict = {}
    done = iterations = 0
    try:
        while done < timesteps and (len(returns) < AGENTS or min(returns.values()) < target):
            runners = algo.train()["env_runners"]
            returns = dict(runners.get("agent_episode_returns_mean", {}))
            done = int(runners.get("num_env_steps_sampled_lifetime", 0))
            iterations += 1
        return Result(time.perf_counter() - started, done, returns, iterations)
    finally:
        algo.stop()


def run(remote: bool, *, timesteps: int, target: float) -> Result:
    cluster = local_simulators(SIMULATORS, allow=ALLOW) if remote else nullcontext(None)
    with cluster as served:
        if served is not None:
            url, key = served
            assert remoterl_ray.init(key, relay_url=url, num_workers=SIMULATORS, num_env_runners=ENVS_PER_RUNNER)
        try:
            return train(timesteps=timesteps, target=target)
        finally:
            remoterl_ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny budget, for a smoke test")
    args = parser.parse_args()
    timesteps, target = (2_000, 1e9) if args.quick else (1_000_000, TARGET)
    import ray

    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)  # once, outside the timings
    print(f"PPO on multi-agent CartPole ({AGENTS} agents, a policy each) to mean return {target:g} per agent; "
          f"2 env runners x {ENVS_PER_RUNNER} envs; remote = {SIMULATORS} simulators")
    run(False, timesteps=512, target=1e9)  # warm-up (torch, imports), not timed
    results: dict[bool, list[Result]] = {False: [], True: []}
    for _ in range(args.rounds):
        for remote in (False, True):
            results[remote].append(run(remote, timesteps=timesteps, target=target))
    print(f"{'path':<7} {'wall s':>8} {'iters':>6} {'env-steps':>10} {'env-steps/s':>12}  returns per agent")
    for remote in (False, True):
        for r in results[remote]:
            per_agent = ", ".join(f"{aid}: {value:.0f}" for aid, value in sorted(r.returns.items()))
            print(f"{'remote' if remote else 'local':<7} {r.seconds:>8.1f} {r.iterations:>6} {r.env_steps:>10,} "
                  f"{r.env_steps / r.seconds:>12,.0f}  {per_agent}")
    wall, rate = remote_over_local(results)
    print(f"remote/local wall time to target {wall:.2f}x (target <= 1.2x); remote/local env-steps/s {rate:.2f}x")
    ray.shutdown()


if __name__ == "__main__":
    main()

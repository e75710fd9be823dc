"""``remoterl demo``: PPO on CartPole, trained through an embedded relay and
simulator processes on this machine (SB3 by default, or RLlib)."""

from __future__ import annotations

import secrets
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from . import api
from .local import start_relay, start_simulator

Framework = Literal["sb3", "rllib"]
ENV_ID = "CartPole-v1"


@dataclass
class DemoResult:
    framework: str
    mean_return: float
    timesteps: int
    seconds: float
    tensorboard_dir: str


@contextmanager
def local_simulators(num_simulators: int, *, allow: Sequence[str] = ()) -> Iterator[tuple[str, str]]:
    """An embedded relay and simulator processes; yields (relay URL, API key)."""
    key = "demo-" + secrets.token_hex(8)
    relay = start_relay(api_keys=[key])
    sims = []
    try:
        sims = [start_simulator(relay.url, key, allow=allow) for _ in range(num_simulators)]
        relay.wait_for(key, "simulator", num_simulators, timeout=60)
        yield relay.url, key
    finally:
        for sim in sims:
            sim.stop()
        relay.stop()


def _progress(console: Console) -> Progress:
    """The bar is the mean return on its way to the target (the goal; training stops
    there), with the env-steps used of the budget beside it."""
    return Progress(
        TextColumn("[bold]training[/]"),
        BarColumn(),
        TextColumn("mean return [bold green]{task.fields[ret]:>5.1f}[/] of {task.total:.0f}"),
        TextColumn("{task.fields[steps]:>7,} of at most {task.fields[budget]:,} env-steps"),
        TimeElapsedColumn(),
        console=console,
    )


Report = Callable[[int, float], None]  # (env-steps so far, mean episode return)


@dataclass
class TrainResult:
    mean_return: float  # SB3: evaluated over 10 episodes if asked; RLlib: last iteration's mean
    env_steps: int
    seconds: float  # from building the envs to the end of training


def train_sb3(
    *,
    num_envs: int,
    timesteps: int,
    target: float,
    logdir: str | None = None,
    report: Report | None = None,
    evaluate: bool = True,
    seed: int = 0,
) -> TrainResult:
    """PPO with RL Zoo's CartPole settings until the last 20 episodes average ``target``."""
    import numpy as np

    from .extras import require

    require("stable_baselines3", "the SB3 demo", "sb3")
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    class Progress(BaseCallback):
        mean = 0.0

        def _on_step(self) -> bool:
            returns = [info["r"] for info in self.model.ep_info_buffer]
            Progress.mean = float(np.mean(returns[-20:])) if returns else 0.0
            if report is not None:
                report(self.num_timesteps, Progress.mean)
            return not (len(returns) >= 20 and Progress.mean >= target)

    started = time.perf_counter()
    env = make_vec_env(ENV_ID, n_envs=num_envs, seed=seed)
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=32,
        batch_size=256,
        gae_lambda=0.8,
        gamma=0.98,
        n_epochs=20,
        ent_coef=0.0,
        learning_rate=lambda f: 1e-3 * f,
        clip_range=lambda f: 0.2 * f,
        tensorboard_log=logdir,
        seed=seed,
        verbose=0,
    )
    model.learn(total_timesteps=timesteps, callback=Progress())
    seconds = time.perf_counter() - started
    mean = Progress.mean
    if evaluate:
        mean = float(evaluate_policy(model, env, n_eval_episodes=10, deterministic=True)[0])
    env.close()
    return TrainResult(mean, model.num_timesteps, seconds)


def train_rllib(*, num_envs: int, timesteps: int, target: float, report: Report | None = None) -> TrainResult:
    """RLlib PPO with two env runners until the mean episode return reaches ``target``.
    Starts Ray unless it is running (and then leaves it running)."""
    from .extras import require

    ray = require("ray", "the RLlib demo", "rllib")
    from ray.rllib.algorithms.ppo import PPOConfig

    own_ray = not ray.is_initialized()
    if own_ray:
        ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    started = time.perf_counter()
    config = (
        PPOConfig()
        .environment(ENV_ID)
        .env_runners(num_env_runners=2, num_envs_per_env_runner=max(1, num_envs // 2), num_cpus_per_env_runner=1)
        .training(lr=3e-4, num_epochs=6, vf_loss_coeff=0.01, train_batch_size_per_learner=2000)
        .debugging(seed=0)
    )
    algo = config.build_algo()
    mean, done = 0.0, 0
    try:
        while mean < target and done < timesteps:
            runners = algo.train()["env_runners"]
            mean = float(runners.get("episode_return_mean", 0.0))
            done = int(runners.get("num_env_steps_sampled_lifetime", 0))
            if report is not None:
                report(done, mean)
        return TrainResult(mean, done, time.perf_counter() - started)
    finally:
        algo.stop()
        if own_ray:
            ray.shutdown()


def run_demo(
    *,
    framework: Framework = "sb3",
    num_envs: int = 16,
    num_simulators: int = 2,
    timesteps: int = 150_000,
    target: float = 475.0,
    logdir: str | None = None,
) -> DemoResult:
    console = Console()
    logdir = logdir or tempfile.mkdtemp(prefix="remoterl-demo-")
    console.print(
        f"[bold]remoterl demo[/]: PPO ({framework}) on {ENV_ID}, {num_envs} envs hosted by "
        f"{num_simulators} simulator process(es) through an embedded relay"
    )
    with local_simulators(num_simulators) as (url, key):
        per_simulator = max(1, -(-num_envs // num_simulators))
        remote_logs = f"{logdir}/remoterl"
        if not api.init(
            key, relay_url=url, num_workers=num_simulators, num_env_runners=per_simulator, tensorboard_dir=remote_logs
        ):
            raise SystemExit("could not reach the relay or its simulators")
        started = time.perf_counter()
        try:
            with _progress(console) as progress:
                task = progress.add_task("train", total=target, ret=0.0, steps=0, budget=timesteps)

                def report(done: int, mean: float) -> None:
                    progress.update(task, completed=min(max(mean, 0.0), target), ret=mean, steps=done)

                if framework == "sb3":
                    result = train_sb3(
                        num_envs=num_envs, timesteps=timesteps, target=target, logdir=logdir, report=report
                    )
                else:
                    result = train_rllib(num_envs=num_envs, timesteps=timesteps, target=target, report=report)
        finally:
            api.shutdown()
    seconds = time.perf_counter() - started
    console.print(
        f"final mean return [bold green]{result.mean_return:.1f}[/] after {result.env_steps:,} env-steps "
        f"in {seconds:.0f}s ({result.env_steps / result.seconds:,.0f} env-steps/s)"
    )
    console.print(f"TensorBoard logs: [bold]{logdir}[/]  (tensorboard --logdir {logdir})")
    return DemoResult(framework, result.mean_return, result.env_steps, seconds, logdir)

"""``remoterl demo``: a relay, simulators and a trainer on this machine."""

from __future__ import annotations

import secrets
import time

import gymnasium as gym
import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from . import api
from .local import start_relay, start_simulator


def run_demo(*, env_id: str, num_envs: int, num_simulators: int, steps: int) -> dict[str, float]:
    console = Console()
    key = "demo-" + secrets.token_hex(8)
    console.print(f"[bold]remoterl demo[/]: relay + {num_simulators} simulator process(es) on 127.0.0.1")
    relay = start_relay(api_keys=[key])
    sims = [start_simulator(relay.url, key) for _ in range(num_simulators)]
    try:
        relay.wait_for(key, "simulator", num_simulators, timeout=60)
        if not api.init(key, role="trainer", relay_url=relay.url, num_workers=num_simulators,
                        num_env_runners=max(1, -(-num_envs // num_simulators))):
            raise SystemExit("could not reach the relay or its simulators")
        envs = gym.make_vec(env_id, num_envs=num_envs)
        console.print(f"{envs!r}: {num_envs} envs over shards {envs.shard_sizes}")
        envs.reset(seed=0)
        episodes = 0
        started = time.perf_counter()
        with Progress(TextColumn("stepping"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as progress:
            task = progress.add_task("steps", total=steps)
            for _ in range(steps):
                _, _, terminated, truncated, _ = envs.step(envs.action_space.sample())
                episodes += int(np.sum(terminated | truncated))
                progress.advance(task)
        elapsed = time.perf_counter() - started
        envs.close()
        rate = steps * num_envs / elapsed
        console.print(
            f"{steps * num_envs} env-steps in {elapsed:.2f}s: [bold green]{rate:,.0f} env-steps/s[/], "
            f"{elapsed / steps * 1e3:.2f} ms per vector step, {episodes} episodes finished"
        )
        return {"env_steps_per_s": rate, "episodes": float(episodes)}
    finally:
        api.shutdown()
        for sim in sims:
            sim.stop()
        relay.stop()

"""What several benchmarks measure the same way: a remote env's step latencies."""

from __future__ import annotations

import time

import numpy as np
from gymnasium import Env


def step_latencies(env: Env, steps: int) -> list[float]:
    """Seconds each of ``steps`` steps with random actions took (resetting as episodes end)."""
    out = []
    for _ in range(steps):
        started = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        out.append(time.perf_counter() - started)
        if terminated or truncated:
            env.reset()
    return out


def pct(values: list[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` (seconds) in milliseconds."""
    return float(np.percentile(values, q)) * 1000


def medians(rates: dict[str, list[float]]) -> dict[str, float]:
    """Each phase's median over interleaved rounds (what the benchmarks report)."""
    return {name: float(np.median(values)) for name, values in rates.items()}

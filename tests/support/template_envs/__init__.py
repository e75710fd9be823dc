"""An env package laid out like Gymnasium's env-package template: its
``__init__`` re-exports ``register``, which must never become an entry point.

It also holds one env class and two functions that build it: a simulator's
allowlist names ``make_tiny`` in the security tests, never ``make_other``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import register  # noqa: F401  (re-exported, as the template does)


class TinyEnv(gym.Env):
    """Counts steps; ``config`` is an RLlib env_config when made by a creator."""

    def __init__(self, config: dict[str, Any] | None = None, start: int = 0) -> None:
        self.start = int((config or {}).get("start", start))
        self.observation_space = spaces.Box(-1e6, 1e6, (1,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.count = self.start

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.count = self.start
        return np.array([self.count], np.float32), {}

    def step(self, action: int):
        self.count += 1
        return np.array([self.count], np.float32), 1.0, self.count >= self.start + 3, False, {}


def make_tiny(config: dict[str, Any] | None = None, **kwargs: Any) -> TinyEnv:
    """An env creator: Gymnasium calls it with kwargs, RLlib with an env_config."""
    return TinyEnv(config, **kwargs)


def make_other(config: dict[str, Any] | None = None, **kwargs: Any) -> TinyEnv:
    """The same, but never named on an allowlist: it must be refused."""
    return TinyEnv(config, **kwargs)

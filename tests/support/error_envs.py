"""Envs that raise, for the tests of how their errors reach a trainer (and
RLlib), and an RLlib creator returning a vector env. Simulators import this
module only when allowed (``allow=("error_envs", "error_envs:make_vector_env")``).

The env classes take RLlib's ``env_config`` as their one argument, so each
serves as a ``gym.register`` entry point, a ``tune.register_env`` creator
and a local env alike.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class TypeErrorEnv(gym.Env):
    """``step(1)`` raises ``TypeError`` (``step(0)`` is fine)."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        if action == 1:
            raise TypeError("TypeErrorEnv does not take action 1")
        return np.zeros(1, np.float32), 0.0, False, False, {}


class RecreateOnceEnv(gym.Env):
    """Raises RLlib's ``StepFailedRecreateEnvError`` on step ``fail_at`` of the
    first instance made in this process with ``config["tag"]``, as an env
    wrapping an unstable external simulator would (RLlib then recreates it)."""

    failed: set[str] = set()

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        from ray.rllib.env.env_errors import StepFailedRecreateEnvError

        config = dict(config or {})
        self.error = StepFailedRecreateEnvError
        self.tag = str(config.get("tag", ""))
        self.fail_at = int(config.get("fail_at", 5))
        self.observation_space = spaces.Box(0.0, 100.0, (1,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self.t += 1
        if self.t == self.fail_at and self.tag not in RecreateOnceEnv.failed:
            RecreateOnceEnv.failed.add(self.tag)
            raise self.error(f"RecreateOnceEnv {self.tag} lost its external simulator")
        return np.array([self.t], np.float32), 1.0, self.t >= 10, False, {}


class BoundedActionEnv(gym.Env):
    """Takes actions in [-1, 1] and raises ``ValueError`` for any other, as
    many envs check their actions themselves."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (1,) or not np.all(np.abs(action) <= 1.0):
            raise ValueError(f"BoundedActionEnv rejects action {action}: outside [-1, 1]")
        self.t += 1
        return np.zeros(2, np.float32), float(-abs(action[0])), self.t >= 20, False, {}


class StepCounterEnv(gym.Env):
    """Counts its steps from ``start``; episodes last 8 steps."""

    def __init__(self, start: int = 0) -> None:
        self.start = start
        self.observation_space = spaces.Box(0.0, np.inf, (1,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.t = self.start
        return np.array([self.t], np.float32), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self.t += 1
        return np.array([self.t], np.float32), float(action), self.t >= self.start + 8, False, {}


class ConfiguredCounterEnv(StepCounterEnv):
    """``StepCounterEnv`` as an RLlib creator: built from its env_config."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(int((config or {}).get("start", 0)))


def make_vector_env(config: dict[str, Any]) -> gym.vector.VectorEnv:
    """An RLlib creator returning a whole vector env of ``config["num_envs"]``
    envs, for ``gym_env_vectorize_mode="vector_entry_point"`` (RLlib adds that
    key only in that mode)."""
    start = int(config.get("start", 0))
    return gym.vector.SyncVectorEnv([lambda: StepCounterEnv(start) for _ in range(int(config.get("num_envs", 1)))])


def make_counter(start: int = 0) -> StepCounterEnv:
    """A ``gym.register`` entry point function (simulators run it only if named on their allowlist)."""
    return StepCounterEnv(start)


def make_counter_unlisted(start: int = 0) -> StepCounterEnv:
    """The same function, left off the test simulators' allowlist."""
    return StepCounterEnv(start)

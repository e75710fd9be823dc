"""Envs for ``bench/large_obs.py``; its simulators import this module (allowed by name)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


def pong_84x84x4(**kwargs):
    """Pong as DQN feeds it: grey 84x84 frames, 4 frames skipped, the last 4 stacked (uint8)."""
    import ale_py

    gym.register_envs(ale_py)
    env = gym.make("ALE/Pong-v5", frameskip=1, **kwargs)
    return gym.wrappers.FrameStackObservation(gym.wrappers.AtariPreprocessing(env, frame_skip=4), 4)


class MegabyteEnv(gym.Env):
    """A float32 observation of ``size`` bytes per step that costs nothing to make:
    what is measured is moving it."""

    def __init__(self, size: int = 1 << 20) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, (size // 4,), np.float32)
        self.action_space = spaces.Discrete(2)
        self._obs = np.random.default_rng(0).standard_normal(size // 4).astype(np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._obs, {}

    def step(self, action):
        return self._obs, 1.0, False, False, {}


gym.register("PongDQN-v0", entry_point="large_obs_envs:pong_84x84x4")
gym.register("Megabyte-v0", entry_point="large_obs_envs:MegabyteEnv")

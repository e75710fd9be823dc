"""A custom env package. The simulator needs it importable and allowed:

    PYTHONPATH=examples/custom_env REMOTERL_ALLOW_MODULES=gridwalk python examples/simulator.py
"""

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class GridWalkEnv(gym.Env):
    """Walk from the left end of a line of ``size`` cells to the right end."""

    metadata = {"render_modes": []}

    def __init__(self, size: int = 8):
        self.size = size
        self.observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = spaces.Discrete(2)  # 0: left, 1: right
        self.pos = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = 0
        return np.array([0.0], dtype=np.float32), {}

    def step(self, action):
        self.pos = max(0, self.pos + (1 if action == 1 else -1))
        done = self.pos >= self.size - 1
        obs = np.array([self.pos / (self.size - 1)], dtype=np.float32)
        return obs, 1.0 if done else -0.1, done, False, {"pos": self.pos}

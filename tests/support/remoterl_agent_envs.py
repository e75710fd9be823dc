"""Multi-agent test envs (PettingZoo, and RLlib's MultiAgentEnv); simulators of the
multi-agent tests allow this module. Kept apart from ``remoterl_testenvs`` so the
other tests' simulators never import Ray or PettingZoo."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv
from pettingzoo.classic import rps_v2
from ray.rllib.env.multi_agent_env import MultiAgentEnv
from ray.rllib.env.wrappers.pettingzoo_env import ParallelPettingZooEnv

SCOUTS = 3
MAX_STEPS = 12


def _base_space() -> spaces.Dict:
    return spaces.Dict({"pos": spaces.Box(-10.0, 10.0, (2,), np.float64), "seen": spaces.MultiBinary(SCOUTS)})


class Arrivals(ParallelEnv):
    """Agents come and go: a base is there all episode; scout 0 from the start, scout 1
    from step 2 and scout 2 from step 4 (``arrive_every`` apart); scout 0 terminates at
    step 5, and what is left is truncated at ``max_steps``. The base and the scouts have
    spaces of their own, rewards of their own types, and infos holding arrays and tuples."""

    metadata = {"name": "arrivals_v0", "render_modes": ["rgb_array"], "is_parallelizable": True}

    def __init__(self, max_steps: int = MAX_STEPS, arrive_every: int = 2, render_mode: str | None = None) -> None:
        self.possible_agents = ["base"] + [f"scout_{i}" for i in range(SCOUTS)]
        self.max_steps = max_steps
        self.arrive_every = arrive_every
        self.render_mode = render_mode
        self.agents: list[str] = []
        self._spaces = {"base": (_base_space(), spaces.MultiDiscrete([3, 2]))}
        for i in range(SCOUTS):
            self._spaces[f"scout_{i}"] = (spaces.Box(-1.0, 1.0, (3,), np.float32), spaces.Discrete(3, start=-1))
        self._rng = np.random.default_rng()
        self._t = 0

    def observation_space(self, agent: str) -> spaces.Space:
        return self._spaces[agent][0]

    def action_space(self, agent: str) -> spaces.Space:
        return self._spaces[agent][1]

    def _observe(self, agent: str) -> Any:
        if agent == "base":
            seen = np.array([f"scout_{i}" in self.agents for i in range(SCOUTS)], dtype=np.int8)
            return {"pos": self._rng.uniform(-10, 10, 2), "seen": seen}
        return self._rng.uniform(-1, 1, 3).astype(np.float32)

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._t = 0
        self.agents = ["base", "scout_0"]
        obs = {a: self._observe(a) for a in self.agents}
        return obs, {a: {"joined": 0, "options": dict(options or {})} for a in self.agents}

    def step(self, actions: dict) -> tuple[dict, dict, dict, dict, dict]:
        self._t += 1
        acting = list(self.agents)
        for i in range(1, SCOUTS):
            if self._t == i * self.arrive_every and f"scout_{i}" not in self.agents:
                self.agents.append(f"scout_{i}")
        terminations = {a: a == "scout_0" and self._t == 5 for a in self.agents}
        truncations = {a: self._t >= self.max_steps for a in self.agents}
        rewards: dict[str, Any] = {}
        for a in self.agents:
            act = actions.get(a)
            if a == "base":
                rewards[a] = float(np.sum(act)) if act is not None else 0.0
            else:
                rewards[a] = np.float32(self._rng.normal() + (act if act is not None else 0))
        obs = {a: self._observe(a) for a in self.agents}
        infos = {a: {"t": self._t, "acted": a in acting, "pair": (a, self._t), "trace": np.arange(self._t % 4)}
                 for a in self.agents}
        self.agents = [a for a in self.agents if not (terminations[a] or truncations[a])]
        return obs, rewards, terminations, truncations, infos

    def state(self) -> np.ndarray:
        return np.array([self._t, len(self.agents)], dtype=np.int32)

    def render(self) -> np.ndarray:
        frame = np.zeros((8, 8, 3), dtype=np.uint8)
        frame[: len(self.agents), : self._t % 8] = 255
        return frame


def arrivals(**kwargs: Any) -> Arrivals:
    return Arrivals(**kwargs)


class ArrivalsMultiAgent(MultiAgentEnv):
    """``Arrivals`` as an RLlib ``MultiAgentEnv``, written as RLlib's docs teach: spaces
    per agent up front, ``__all__`` in the flags, ``agents`` kept current."""

    def __init__(self, config: dict | None = None) -> None:
        super().__init__()
        self.env = Arrivals(**dict(config or {}))
        self.possible_agents = list(self.env.possible_agents)
        self.agents = []
        self.observation_spaces = {a: self.env.observation_space(a) for a in self.possible_agents}
        self.action_spaces = {a: self.env.action_space(a) for a in self.possible_agents}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        obs, infos = self.env.reset(seed=seed, options=options)
        self.agents = list(self.env.agents)
        return obs, infos

    def step(self, action_dict: dict) -> tuple[dict, dict, dict, dict, dict]:
        obs, rewards, terminateds, truncateds, infos = self.env.step(action_dict)
        self.agents = list(self.env.agents)
        terminateds["__all__"] = False
        truncateds["__all__"] = self.env._t >= self.env.max_steps
        return obs, rewards, terminateds, truncateds, infos


def make_rps(config: dict) -> ParallelPettingZooEnv:
    """Rock-paper-scissors through RLlib's ``ParallelPettingZooEnv`` wrapper (a module-level creator)."""
    return ParallelPettingZooEnv(rps_v2.parallel_env(**dict(config)))


def single_agent(**kwargs: Any) -> gym.Env:
    """A factory that makes a single-agent env: not what a multi-agent make may host."""
    return gym.make("CartPole-v1", **kwargs)


REFUSED_CLOSED = 0  # envs a simulator built for a multi-agent make, refused, and closed


class NotMultiAgent(gym.Env):
    """Made by a factory of a multi-agent make: refused, and it must be closed."""

    observation_space = spaces.Discrete(2)
    action_space = spaces.Discrete(2)

    def close(self) -> None:
        global REFUSED_CLOSED
        REFUSED_CLOSED += 1


def not_multi_agent() -> NotMultiAgent:
    return NotMultiAgent()


def refused_closed(env: Any = None) -> int:
    return REFUSED_CLOSED


Arrivals.refused_closed = refused_closed  # a public method: what a trainer reads the count with

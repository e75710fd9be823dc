"""Envs used by the tests; simulators import this module only when allowed."""

from __future__ import annotations

import os
import time

import gymnasium as gym
import numpy as np
from gymnasium import spaces


def all_spaces() -> spaces.Dict:
    """One space of every supported kind, nested."""
    return spaces.Dict(
        {
            "box_inf": spaces.Box(low=-np.inf, high=np.inf, shape=(3,), dtype=np.float64),
            "box_half": spaces.Box(low=np.array([0.0, -np.inf], np.float32), high=np.array([np.inf, 1.0], np.float32)),
            "image": spaces.Box(low=0, high=255, shape=(4, 4, 3), dtype=np.uint8),
            "ints": spaces.Box(low=-5, high=5, shape=(2,), dtype=np.int16),
            "discrete": spaces.Discrete(3, start=-1),
            "multi_discrete": spaces.MultiDiscrete([3, 4], start=[1, 2]),
            "multi_binary": spaces.MultiBinary([2, 3]),
            "text": spaces.Text(min_length=1, max_length=6, charset="xyz01"),
            "tuple": spaces.Tuple((spaces.Discrete(2), spaces.Dict({"inner": spaces.Box(-1, 1, (2,))}))),
            "sequence": spaces.Sequence(spaces.Discrete(4)),
            "one_of": spaces.OneOf((spaces.Discrete(2), spaces.Box(0, 1, (1,)))),
        }
    )


class AllSpacesEnv(gym.Env):
    """Observations from a nested space of every kind; infos with numpy values."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, render_mode: str | None = None, scale: float = 1.0) -> None:
        self.observation_space = all_spaces()
        self.action_space = spaces.Tuple((spaces.Discrete(2), spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)))
        self.render_mode = render_mode
        self.scale = scale
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.observation_space.seed(seed)
        self.t = 0
        return self.observation_space.sample(), {"scale": self.scale, "options": options or {}}

    def step(self, action):
        self.t += 1
        info = {
            "np_scalar": np.float32(1.5),
            "np_int": np.int64(self.t),
            "array": np.arange(3, dtype=np.int32) * self.t,
            "nested": {"flag": np.bool_(action[0] == 1), "text": "ok"},
            "action_box": np.asarray(action[1]),
        }
        return self.observation_space.sample(), float(self.t) * self.scale, self.t >= 5, False, info

    def render(self):
        frame = np.zeros((8, 6, 3), dtype=np.uint8)
        frame[..., 0] = self.t
        return frame


class CounterEnv(gym.Env):
    """Tiny deterministic env whose info keys depend on the env's index (for info merging)."""

    def __init__(self, index_key: int = 0, delay: float = 0.0) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = spaces.Discrete(3)
        self.delay = delay
        self.count = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.count = int(self.np_random.integers(0, 100))
        return np.array([self.count, 0], dtype=np.float32), {"start": self.count}

    def step(self, action):
        if self.delay:
            time.sleep(self.delay)
        self.count += int(action)
        info = {"count": self.count}
        if self.count % 2:
            info["odd"] = np.float64(self.count)
        obs = np.array([self.count, action], dtype=np.float32)
        return obs, float(action), self.count > 150, False, info


class GatedCounterEnv(CounterEnv):
    """A ``CounterEnv`` whose steps wait while the file named by the simulator's
    ``REMOTERL_TEST_GATE`` exists (at most a minute): a simulator that cannot answer
    until the test lets it, with no timing in the test."""

    def step(self, action):
        gate = os.environ.get("REMOTERL_TEST_GATE")
        deadline = time.monotonic() + 60
        while gate and os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)
        return super().step(action)


class BigObsEnv(gym.Env):
    """Observations far larger than a relay frame: float32 values that differ along
    the array and from step to step (chunks put back in the wrong order would show)."""

    def __init__(self, size: int = 100_000) -> None:
        self.observation_space = spaces.Box(0, 2000, (size,), np.float32)
        self.action_space = spaces.Discrete(2)
        self._ramp = (np.arange(size) % 1000).astype(np.float32)
        self._t = 0

    def _obs(self) -> np.ndarray:
        return self._ramp + np.float32(self._t)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = int(self.np_random.integers(0, 100))
        return self._obs(), {}

    def step(self, action):
        self._t += 1 + int(action)
        return self._obs(), float(self._t), False, False, {"t": self._t}


def make_preprocessed_pong(**kwargs):
    """Pong as DQN papers feed it (84x84 grey frames, 4 frames skipped), built on the simulator
    (``AtariPreprocessing`` reads the emulator itself, so it cannot wrap a remote env)."""
    import ale_py

    gym.register_envs(ale_py)
    return gym.wrappers.AtariPreprocessing(gym.make("ALE/Pong-v5", frameskip=1, **kwargs), frame_skip=4)


class CorridorEnv(gym.Env):
    """Walk right to the end; observations show where the env sits in RLlib
    terms (worker_index, vector_index), so tests see the creator's context."""

    def __init__(self, length: int = 5, worker_index: int = 0, vector_index: int = 0) -> None:
        self.length = length
        self.where = (worker_index, vector_index)
        self.observation_space = spaces.Box(0, np.inf, (3,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.pos = 0

    def _obs(self):
        return np.array([self.pos, *self.where], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = 0
        return self._obs(), {}

    def step(self, action):
        self.pos += int(action)
        done = self.pos >= self.length
        return self._obs(), 1.0 if done else -0.01, done, False, {}


class EchoTextEnv(gym.Env):
    """Sends text back and forth: the observation, the info and the reset options
    carry whatever the trainer put in ``options["note"]`` (to show the relay never
    keeps a payload)."""

    def __init__(self) -> None:
        self.observation_space = spaces.Text(max_length=64)
        self.action_space = spaces.Discrete(2)
        self.note = "none"

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.note = str((options or {}).get("note", "none"))
        return self.note, {"note": self.note}

    def step(self, action):
        return self.note, 0.0, False, False, {"note": self.note}


class CurriculumEnv(gym.Env):
    """Public state a trainer reaches through call/get_attr/set_attr (SB3's env_method):
    a ``level`` it sets, a method that sets it, and a step counter."""

    metadata = {"render_modes": []}
    observation_space = spaces.Box(0.0, 100.0, (1,), dtype=np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, episode_length: int = 5) -> None:
        self.level = 0
        self.steps_taken = 0
        self.episode_length = episode_length
        self._elapsed = 0

    def set_level(self, level: int, *, bonus: int = 0) -> int:
        self.level = int(level) + bonus
        return self.level

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._elapsed = 0
        if options and "level" in options:
            self.level = int(options["level"])
        return np.array([self.level], dtype=np.float32), {"level": self.level, "py_float": 0.5}

    def step(self, action):
        if action not in (0, 1):
            raise ValueError(f"CurriculumEnv takes 0 or 1, not {action!r}")
        self.steps_taken += 1
        self._elapsed += 1
        obs = np.array([self.level + int(action)], dtype=np.float32)
        info = {"steps": self.steps_taken} if self._elapsed % 2 else {"odd": False}
        return obs, float(self.level), self._elapsed >= self.episode_length, False, info


class StructuredActionEnv(gym.Env):
    """A Dict action (or, with ``tuple_action=True``, a Tuple action), deterministic:
    SB3 hands such actions over one per env."""

    metadata = {"render_modes": []}
    observation_space = spaces.Box(-np.inf, np.inf, (3,), dtype=np.float32)

    def __init__(self, tuple_action: bool = False) -> None:
        parts = {"move": spaces.Discrete(3), "force": spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)}
        self.action_space = spaces.Tuple(parts.values()) if tuple_action else spaces.Dict(parts)
        self.state = np.zeros(3, dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.state = self.np_random.uniform(-1, 1, 3).astype(np.float32)
        return self.state.copy(), {"start": float(self.state[0])}

    def step(self, action):
        move, force = (action["move"], action["force"]) if isinstance(action, dict) else action
        self.state = self.state + np.array([int(move) - 1, *force], dtype=np.float32)
        done = bool(abs(self.state[0]) > 3)
        return self.state.copy(), float(force[0]), done, False, {"move": int(move)}


_made = {"count": 0}


class VaryingBoundsEnv(gym.Env):
    """Each instance made in a process gets the next upper bound (1, 2, 3, ...):
    for ``observation_mode="different"``, whose batched space follows each env's own."""

    metadata = {"render_modes": []}
    action_space = spaces.Discrete(2)

    def __init__(self, index: int | None = None) -> None:
        if index is None:
            _made["count"] += 1
            index = _made["count"]
        self.bound = float(index)
        self.observation_space = spaces.Box(0.0, float(index), (2,), dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample() * 0, {}

    def step(self, action):
        return self.observation_space.sample() * 0, 0.0, False, False, {}


def make_corridor(config):
    """An RLlib env creator: ``config`` is the env_config plus its context."""
    return CorridorEnv(config.get("length", 5), config.worker_index, config.vector_index)


# Importing this module (e.g. for the id "remoterl_testenvs:AllSpaces-v0") registers its envs.
gym.register("AllSpaces-v0", entry_point="remoterl_testenvs:AllSpacesEnv")
gym.register("GatedCounter-v0", entry_point="remoterl_testenvs:GatedCounterEnv")
gym.register("Counter-v0", entry_point="remoterl_testenvs:CounterEnv")
gym.register("EchoText-v0", entry_point="remoterl_testenvs:EchoTextEnv")
gym.register("Curriculum-v0", entry_point="remoterl_testenvs:CurriculumEnv")
gym.register("VaryingBounds-v0", entry_point="remoterl_testenvs:VaryingBoundsEnv")
gym.register("StructuredAction-v0", entry_point="remoterl_testenvs:StructuredActionEnv")
gym.register("BigObs-v0", entry_point="remoterl_testenvs:BigObsEnv")
gym.register("PongPreprocessed-v0", entry_point="remoterl_testenvs:make_preprocessed_pong")

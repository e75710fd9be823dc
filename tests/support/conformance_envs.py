"""Envs for end-to-end conformance tests of spaces the codec needs help with.

Importing this module registers the user-defined :class:`PoseSpace` codec
(``register_space``) and the ids ``Conformance/Graph-v0``,
``Conformance/NestedGraph-v0`` and ``Conformance/CustomSpace-v0``: import it
on both sides (simulators start with ``--allow conformance_envs`` and
``tests/support`` on ``PYTHONPATH``). Every env draws only from
``self.np_random``, so a seed fixes its whole episode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.spaces.graph import GraphInstance

from remoterl_ray import register_space

EPISODE_LENGTH = 6


def _graph_sample(space: spaces.Graph, rng: np.random.Generator, max_nodes: int = 5) -> GraphInstance:
    """A graph of the space drawn from ``rng`` alone (the space's own RNG is not seeded by reset)."""
    num_nodes = int(rng.integers(1, max_nodes + 1))
    nodes = _features(space.node_space, num_nodes, rng)
    num_edges = int(rng.integers(0, num_nodes * 2)) if space.edge_space is not None else 0
    if num_edges == 0:  # like Gymnasium's own samples: no edges means both fields are None
        return GraphInstance(nodes, None, None)
    edges = _features(space.edge_space, num_edges, rng)
    links = rng.integers(0, num_nodes, size=(num_edges, 2), dtype=np.int32)
    return GraphInstance(nodes, edges, links)


def _features(space: spaces.Box | spaces.Discrete, count: int, rng: np.random.Generator) -> np.ndarray:
    if isinstance(space, spaces.Discrete):
        return space.start + rng.integers(0, space.n, size=count, dtype=np.int64)
    return rng.uniform(space.low, space.high, size=(count, *space.shape)).astype(space.dtype)


class _Counting(gym.Env):
    """Shared episode bookkeeping: fixed length, reward for matching a parity of the observation."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.t = 0
        self.obs = self._observe()
        return self.obs, {"t": self.t}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        reward = 1.0 if self._matches(action) else 0.0
        self.t += 1
        self.obs = self._observe()
        return self.obs, reward, self.t >= EPISODE_LENGTH, False, {"t": self.t}

    def _observe(self) -> Any:
        raise NotImplementedError

    def _matches(self, action: Any) -> bool:
        raise NotImplementedError


class GraphEnv(_Counting):
    """Observations are graphs (Box nodes, Discrete edges); the action guesses the node count's parity."""

    def __init__(self) -> None:
        self.observation_space = spaces.Graph(
            node_space=spaces.Box(-1.0, 1.0, (3,), np.float32), edge_space=spaces.Discrete(3)
        )
        self.action_space = spaces.Discrete(2)

    def _observe(self) -> GraphInstance:
        return _graph_sample(self.observation_space, self.np_random)

    def _matches(self, action: Any) -> bool:
        return int(action) == len(self.obs.nodes) % 2


class NestedGraphEnv(_Counting):
    """Graphs nested in a Dict: inside a Tuple, a Sequence and a OneOf."""

    def __init__(self) -> None:
        plain = spaces.Graph(node_space=spaces.Discrete(4), edge_space=None)
        weighted = spaces.Graph(node_space=spaces.Box(0.0, 1.0, (2,), np.float64), edge_space=spaces.Box(0, 9, (1,), np.int16))
        self.observation_space = spaces.Dict(
            {
                "pair": spaces.Tuple((plain, spaces.Box(-1.0, 1.0, (2,), np.float32))),
                "history": spaces.Sequence(weighted),
                "either": spaces.OneOf((spaces.Discrete(3), weighted)),
            }
        )
        self.action_space = spaces.Discrete(2)

    def _observe(self) -> dict[str, Any]:
        rng = self.np_random
        sub = self.observation_space.spaces
        plain, _ = sub["pair"].spaces
        weighted = sub["history"].feature_space
        history = tuple(_graph_sample(weighted, rng) for _ in range(int(rng.integers(0, 4))))
        pick = int(rng.integers(0, 2))
        either = np.int64(pick), (np.int64(rng.integers(0, 3)) if pick == 0 else _graph_sample(weighted, rng))
        point = rng.uniform(-1.0, 1.0, size=2).astype(np.float32)
        return {"pair": (_graph_sample(plain, rng), point), "history": history, "either": either}

    def _matches(self, action: Any) -> bool:
        return int(action) == len(self.obs["history"]) % 2


@dataclass(frozen=True)
class Pose:
    """A sample the payload codec cannot carry: an arbitrary Python object."""

    x: float
    y: float
    heading: int


class PoseSpace(gym.Space[Pose]):
    """A user-defined space: poses in a square arena with a few headings."""

    def __init__(self, size: float = 1.0, headings: int = 4, seed: int | np.random.Generator | None = None) -> None:
        if not (size > 0 and isinstance(headings, int) and headings > 0):
            raise ValueError(f"PoseSpace needs size > 0 and headings > 0, got {size!r}, {headings!r}")
        self.size = float(size)
        self.headings = headings
        super().__init__(None, None, seed)

    def sample(self, mask: Any = None, probability: Any = None) -> Pose:
        x, y = self.np_random.uniform(-self.size, self.size, size=2)
        return Pose(float(x), float(y), int(self.np_random.integers(self.headings)))

    def contains(self, x: Any) -> bool:
        return (
            isinstance(x, Pose)
            and abs(x.x) <= self.size
            and abs(x.y) <= self.size
            and 0 <= x.heading < self.headings
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PoseSpace) and (other.size, other.headings) == (self.size, self.headings)

    def __repr__(self) -> str:
        return f"PoseSpace(size={self.size}, headings={self.headings})"


def pose_space_to_wire(space: PoseSpace) -> dict[str, Any]:
    return {"size": space.size, "headings": space.headings}


def pose_space_from_wire(value: Any) -> PoseSpace:
    """Checks the peer's value: exact types and small bounds, since the space is built from it."""
    if not isinstance(value, dict) or type(value.get("size")) is not float or type(value.get("headings")) is not int:
        raise ValueError("a PoseSpace is {'size': float, 'headings': int}")
    if not 0 < value["headings"] <= 360 or not 0 < value["size"] < 1e6:
        raise ValueError("PoseSpace size or headings out of range")
    return PoseSpace(value["size"], value["headings"])


def pose_to_wire(pose: Pose) -> tuple[float, float, int]:
    return (pose.x, pose.y, pose.heading)


def pose_from_wire(value: Any) -> Pose:
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        raise ValueError("a Pose is (x, y, heading)")
    x, y, heading = value
    if type(x) is not float or type(y) is not float or type(heading) is not int:
        raise ValueError("a Pose is (float, float, int)")
    return Pose(x, y, heading)


register_space(
    PoseSpace,
    "conformance.Pose",
    pose_space_to_wire,
    pose_space_from_wire,
    sample_to_wire=pose_to_wire,
    sample_from_wire=pose_from_wire,
)


class CustomSpaceEnv(_Counting):
    """Observations are :class:`Pose` objects; the action turns (Discrete), or, with
    ``custom_action=True``, is itself a target Pose (a user space in both directions)."""

    def __init__(self, custom_action: bool = False) -> None:
        self.observation_space = PoseSpace(size=2.0, headings=4)
        self.custom_action = custom_action
        self.action_space = PoseSpace(size=2.0, headings=4) if custom_action else spaces.Discrete(4)

    def _observe(self) -> Pose:
        x, y = self.np_random.uniform(-2.0, 2.0, size=2)
        return Pose(float(x), float(y), int(self.np_random.integers(4)))

    def _matches(self, action: Any) -> bool:
        heading = action.heading if isinstance(action, Pose) else int(action)
        return heading == self.obs.heading


def _register_ids() -> None:
    """Ids for ``gym.make``; skipped when already there (this module imported under two names)."""
    for env_id, name in (
        ("Conformance/Graph-v0", "GraphEnv"),
        ("Conformance/NestedGraph-v0", "NestedGraphEnv"),
        ("Conformance/CustomSpace-v0", "CustomSpaceEnv"),
    ):
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=f"conformance_envs:{name}")


_register_ids()

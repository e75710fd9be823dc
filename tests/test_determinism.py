"""Determinism contract: remote envs give exactly what local envs give.

For each env id and each way a trainer builds envs (``gym.make``,
``gym.make_vec`` with Gymnasium's default mode, ``"sync"`` and
``"vector_entry_point"``, and SB3's ``make_vec_env``), the same seeds and the
same pre-drawn actions must give, over 500 steps, remote results equal to
local ones in value *and* type at every level (obs dtype and shape, rewards,
flags, infos with nested keys: a Python ``int`` where local has one, not a
``numpy.int64``). Remote runs twice: on one simulator, and split over two.
Local references are computed before ``init`` patches anything, with the
functions captured at import.
"""

from __future__ import annotations

import os

# MuJoCo picks its GL backend when imported: headless software rendering here and in the simulators.
os.environ.setdefault("MUJOCO_GL", "osmesa")

import copy
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from conftest import Keys, SimulatorPool, init_trainer
from identical import assert_identical
from stable_baselines3.common.env_util import make_vec_env

import remoterl_ray
from remoterl_ray.local import LocalRelay

LOCAL_MAKE = gym.make
LOCAL_MAKE_VEC = gym.make_vec
LOCAL_MAKE_VEC_ENV = make_vec_env

STEPS = 500
NUM_ENVS = 4
SEED = 7  # env seeds
ACTION_SEED = 11  # seeds the local action space that pre-draws the actions
RENDER_STEPS = 3
SIM_ENV = {"MUJOCO_GL": "osmesa"}

ENV_IDS = ("CartPole-v1", "Pendulum-v1", "FrozenLake-v1", "Taxi-v3", "Blackjack-v1", "HalfCheetah-v5")
VECTOR_ENTRY_IDS = tuple(env_id for env_id in ENV_IDS if gym.spec(env_id).vector_entry_point is not None)

Outcome = list[tuple[str, Any]]  # (label, what the env returned), in call order


# ---------------------------------------------------------------------------------------------
# The comparison: every call in order, values and types (``identical.assert_identical``)


def assert_same_outcome(expected: Outcome, got: Outcome, type_only: Callable[[str], bool] = lambda _: False) -> None:
    """Every call in order: same labels (same episode ends), then identical results."""
    for index, ((label, e), (got_label, g)) in enumerate(zip(expected, got)):
        assert got_label == label, f"call {index}: remote did {got_label!r} where local did {label!r}"
        assert_identical(e, g, label, type_only)
    assert len(got) == len(expected), f"remote made {len(got)} calls, local {len(expected)}"


def monitor_time(path: str) -> bool:
    """SB3's Monitor puts wall-clock seconds in ``info['episode']['t']``: compare its type only."""
    return path.endswith("['episode']['t']")


# ---------------------------------------------------------------------------------------------
# Rollouts: the same function runs locally and remotely


def draw(space: gym.Space, count: int) -> list[Any]:
    """Actions from a seeded ``sample()`` of a locally built space, drawn before any run."""
    space.seed(ACTION_SEED)
    return [space.sample() for _ in range(count)]


def describe(env: gym.Env | gym.vector.VectorEnv) -> Outcome:
    spaces = [("observation_space", env.observation_space), ("action_space", env.action_space)]
    if isinstance(env, gym.vector.VectorEnv):
        spaces += [
            ("single_observation_space", env.single_observation_space),
            ("single_action_space", env.single_action_space),
            ("num_envs", env.num_envs),
            ("metadata['autoreset_mode']", env.metadata.get("autoreset_mode")),
        ]
    return spaces


def run_single(envs: list[gym.Env], actions: list[Any]) -> list[Outcome]:
    """Step each env in lockstep with the same actions; an ended episode is reset unseeded,
    so the env's own RNG carries on. Several envs at once show they share no state."""
    outcomes: list[Outcome] = [describe(env) + [("reset", env.reset(seed=SEED))] for env in envs]
    for step, action in enumerate(actions):
        for env, outcome in zip(envs, outcomes):
            result = env.step(action)
            outcome.append((f"step {step}", result))
            if result[2] or result[3]:
                outcome.append((f"reset after step {step}", env.reset()))
    return outcomes


def run_vector(env: gym.vector.VectorEnv, actions: list[Any]) -> Outcome:
    """Seeded reset, then steps; the vector env autoresets in its own mode."""
    outcome = describe(env) + [("reset", env.reset(seed=SEED))]
    outcome += [(f"step {step}", env.step(action)) for step, action in enumerate(actions)]
    return outcome


def run_sb3(venv: Any, actions: list[np.ndarray]) -> Outcome:
    """SB3 VecEnv API: seeds were given to ``make_vec_env``; reset infos live on the env."""
    outcome: Outcome = [
        ("observation_space", venv.observation_space),
        ("action_space", venv.action_space),
        ("num_envs", venv.num_envs),
    ]
    obs = venv.reset()
    outcome.append(("reset", (obs, copy.deepcopy(venv.reset_infos))))
    outcome += [(f"step {step}", venv.step(action)) for step, action in enumerate(actions)]
    return outcome


def sb3_actions(venv: Any) -> list[np.ndarray]:
    space = venv.action_space
    space.seed(ACTION_SEED)
    return [np.stack([space.sample() for _ in range(venv.num_envs)]) for _ in range(STEPS)]


def shards_of(env: Any) -> list[int] | None:
    """How the remote envs were placed (None if the env is not a remote vector env)."""
    inner = getattr(env, "venv", env)
    return getattr(inner, "shard_sizes", None)


# ---------------------------------------------------------------------------------------------
# Local references: computed once per case (both placements compare with them), always before
# ``init`` patches Gymnasium, with the functions captured at import


@functools.cache
def local_single(env_id: str) -> tuple[list[Any], Outcome]:
    env = LOCAL_MAKE(env_id)
    actions = draw(env.action_space, STEPS)
    (expected,) = run_single([env], actions)
    env.close()
    return actions, expected


@functools.cache
def local_vector(env_id: str, mode: str | None) -> tuple[list[Any], Outcome]:
    mode_kwargs = {} if mode is None else {"vectorization_mode": mode}
    env = LOCAL_MAKE_VEC(env_id, num_envs=NUM_ENVS, **mode_kwargs)
    actions = draw(env.action_space, STEPS)
    expected = run_vector(env, actions)
    env.close()
    return actions, expected


@functools.cache
def local_sb3(env_id: str) -> tuple[list[np.ndarray], Outcome]:
    venv = LOCAL_MAKE_VEC_ENV(env_id, n_envs=NUM_ENVS, seed=SEED)
    actions = sb3_actions(venv)
    expected = run_sb3(venv, actions)
    venv.close()
    return actions, expected


def render_frames(env: gym.Env, actions: list[Any]) -> Outcome:
    outcome: Outcome = [("reset", env.reset(seed=SEED)), ("frame after reset", env.render())]
    for step, action in enumerate(actions):
        outcome += [(f"step {step}", env.step(action)), (f"frame after step {step}", env.render())]
    return outcome


@functools.cache
def local_frames() -> tuple[list[Any], Outcome]:
    env = LOCAL_MAKE("HalfCheetah-v5", render_mode="rgb_array")
    actions = draw(env.action_space, RENDER_STEPS)
    expected = render_frames(env, actions)
    env.close()
    return actions, expected


# ---------------------------------------------------------------------------------------------
# Workspaces: one relay for the session, each simulator workspace started once for this module


@pytest.fixture(scope="module", autouse=True)
def mujoco_log_elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """MuJoCo appends warnings to MUJOCO_LOG.TXT in the working directory: keep that file (ours,
    and the simulators', which inherit the directory) out of the project tree."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("mujoco-cwd"))
        yield


@contextmanager
def workspace(relay: LocalRelay, keys: Keys, count: int) -> Iterator[str]:
    """``count`` simulators with MuJoCo's headless GL, online under a fresh key."""
    pool = SimulatorPool(relay, keys.take())
    try:
        try:
            pool.start(count, env=SIM_ENV)  # waits at most 30 s for them to be online
        except TimeoutError as exc:
            logs = "\n".join(proc.output()[-2000:] for proc in pool.procs)
            raise TimeoutError(f"{exc}; simulator output:\n{logs}") from exc
        yield pool.key
    finally:
        pool.stop()


@pytest.fixture(scope="module")
def one_sim(relay: LocalRelay, keys: Keys) -> Iterator[str]:
    with workspace(relay, keys, 1) as key:
        yield key


@pytest.fixture(scope="module")
def split_sims(relay: LocalRelay, keys: Keys) -> Iterator[str]:
    with workspace(relay, keys, 2) as key:
        yield key


@dataclass
class Remote:
    """Where remote runs go: a workspace, and the init arguments that place NUM_ENVS envs there."""

    name: str
    relay: LocalRelay
    key: str
    num_workers: int
    shards: list[int]

    @contextmanager
    def trainer(self) -> Iterator[None]:
        num_env_runners = max(self.shards)
        assert init_trainer(self.relay, self.key, num_workers=self.num_workers, num_env_runners=num_env_runners)
        try:
            yield
        finally:
            remoterl_ray.shutdown()


@pytest.fixture(params=["one", "split"])
def remote(request: pytest.FixtureRequest, relay: LocalRelay) -> Remote:
    if request.param == "one":
        return Remote("one", relay, request.getfixturevalue("one_sim"), 1, [NUM_ENVS])
    return Remote("split", relay, request.getfixturevalue("split_sims"), 2, [NUM_ENVS // 2] * 2)


# ---------------------------------------------------------------------------------------------
# The cases


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_make(env_id: str, remote: Remote) -> None:
    """(a) ``gym.make``; split: two envs at once (one per simulator), stepped in lockstep."""
    actions, expected = local_single(env_id)
    with remote.trainer():
        envs = [gym.make(env_id) for _ in remote.shards]
        try:
            outcomes = run_single(envs, actions)
        finally:
            for env in envs:
                env.close()
    for got in outcomes:
        assert_same_outcome(expected, got)


VECTOR_CASES = [(env_id, None) for env_id in ENV_IDS] + [(env_id, "sync") for env_id in ENV_IDS]
VECTOR_CASES += [(env_id, "vector_entry_point") for env_id in VECTOR_ENTRY_IDS]


@pytest.mark.parametrize(
    ("env_id", "mode"), VECTOR_CASES, ids=[f"{env_id}-{mode or 'default'}" for env_id, mode in VECTOR_CASES]
)
def test_make_vec(env_id: str, mode: str | None, remote: Remote) -> None:
    """(b) no ``vectorization_mode`` (Gymnasium's default: the vector entry point if the spec
    has one), (c) ``"sync"``, (d) ``"vector_entry_point"``: the mode is passed on only if given."""
    mode_kwargs = {} if mode is None else {"vectorization_mode": mode}
    actions, expected = local_vector(env_id, mode)
    # One vector entry point env is one object with one RNG for all its sub-envs: it cannot be
    # split over simulators and stay equal, so only its results are the contract.
    splittable = mode == "sync" or gym.spec(env_id).vector_entry_point is None
    with remote.trainer():
        env = gym.make_vec(env_id, num_envs=NUM_ENVS, **mode_kwargs)
        try:
            if splittable:
                assert shards_of(env) == remote.shards, f"placement on {remote.name}: {shards_of(env)}"
            got = run_vector(env, actions)
        finally:
            env.close()
    assert_same_outcome(expected, got)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_sb3_make_vec_env(env_id: str, remote: Remote) -> None:
    """(e) SB3's ``make_vec_env`` with a seed: obs, rewards, dones and every info (Monitor's
    episode stats, ``terminal_observation``, ``TimeLimit.truncated``, the env's own keys)."""
    actions, expected = local_sb3(env_id)
    with remote.trainer():
        venv = make_vec_env(env_id, n_envs=NUM_ENVS, seed=SEED)
        try:
            assert shards_of(venv) == remote.shards, f"placement on {remote.name}: {shards_of(venv)}"
            got = run_sb3(venv, actions)
        finally:
            venv.close()
    assert_same_outcome(expected, got, type_only=monitor_time)


def test_halfcheetah_rgb_array_frames_equal_local(remote: Remote) -> None:
    """MuJoCo's offscreen frames are pixel for pixel the local ones (same OSMesa rendering)."""
    actions, expected = local_frames()
    assert expected[1][1].shape == (480, 480, 3) and expected[1][1].any()  # a real frame, not a blank
    with remote.trainer():
        env = gym.make("HalfCheetah-v5", render_mode="rgb_array")
        try:
            assert env.render_mode == "rgb_array"
            got = render_frames(env, actions)
        finally:
            env.close()
    assert_same_outcome(expected, got)

"""Every Gymnasium space, and a user-defined one, local and remote side by side.

Graph (alone and nested in Tuple, Dict, Sequence and OneOf), a user space
carried by a registered codec (observations and actions), and the classic
spaces (Text, Sequence, OneOf, ...) in ``AllSpaces``: a single env and a
vector env of each, on one simulator and split over two, give what the same
env gives locally for the same seeds and actions, value for value and type
for type (``GraphInstance`` included).
"""

from __future__ import annotations

from collections.abc import Iterator

import gymnasium as gym
import pytest
from conftest import TEST_ENVS_ALLOW, SimulatorPool, init_trainer, local_gym
from gymnasium.spaces.graph import GraphInstance
from test_protocol import assert_same

import conformance_envs  # noqa: F401 - registers the ids and the Pose space codec here too
import remoterl_ray

SINGLE_IDS = [
    "Conformance/Graph-v0",
    "Conformance/NestedGraph-v0",
    "Conformance/CustomSpace-v0",
    "remoterl_testenvs:AllSpaces-v0",
]
# AllSpaces draws from its space's own RNG, which only a seeded reset reseeds: not under autoreset.
VECTOR_IDS = ["Conformance/Graph-v0", "Conformance/NestedGraph-v0"]
STEPS = 14  # two episodes and more of the conformance envs (6 steps each)


@pytest.fixture(scope="module", params=[1, 2], ids=["one", "two"])
def sims(request, relay, keys) -> Iterator[int]:
    """Simulators that import the conformance envs (the id's module, allowed) and the test envs."""
    key = keys.take()
    pool = SimulatorPool(relay, key)
    pool.start(request.param, allow=(*TEST_ENVS_ALLOW, "conformance_envs"))
    # The simulators import conformance_envs (and so its space codec) when an id needs it.
    pool_env_id = "conformance_envs:Conformance/Graph-v0"
    assert init_trainer(relay, key, num_env_runners=2)
    try:
        gym.make(pool_env_id).close()  # first use imports the module on that simulator
        yield request.param
    finally:
        remoterl_ray.shutdown()
        pool.stop()


def actions_for(env: gym.Env | gym.vector.VectorEnv, count: int, seed: int) -> list:
    space = env.action_space
    space.seed(seed)
    return [space.sample() for _ in range(count)]


def module_id(env_id: str) -> str:
    """Ids of the conformance envs are made as ``conformance_envs:...``: the simulator imports it."""
    return env_id if ":" in env_id else f"conformance_envs:{env_id}"


@pytest.mark.parametrize("env_id", SINGLE_IDS)
def test_single_env_equals_local(sims, env_id):
    kwargs = {"custom_action": True} if "CustomSpace" in env_id else {}
    with local_gym():
        local = gym.make(module_id(env_id), **kwargs)
    remote = gym.make(module_id(env_id), **kwargs)
    assert isinstance(remote, remoterl_ray.RemoteEnv)
    assert remote.observation_space == local.observation_space
    assert remote.action_space == local.action_space
    for seed in (0, 5):
        assert_same(local.reset(seed=seed), remote.reset(seed=seed))
        for action in actions_for(local, STEPS, seed):
            expected, got = local.step(action), remote.step(action)
            assert_same(expected, got)
            if expected[2] or expected[3]:
                seed += 100
                assert_same(local.reset(seed=seed), remote.reset(seed=seed))
    if env_id == "Conformance/Graph-v0":
        assert isinstance(remote.reset(seed=1)[0], GraphInstance)
    remote.close()


@pytest.mark.parametrize("env_id", VECTOR_IDS)
@pytest.mark.parametrize("autoreset_mode", ["NextStep", "SameStep"])
def test_vector_env_equals_local(sims, env_id, autoreset_mode):
    kwargs = {"vectorization_mode": "sync", "vector_kwargs": {"autoreset_mode": autoreset_mode}}
    with local_gym():
        local = gym.make_vec(module_id(env_id), num_envs=3, **kwargs)
    remote = gym.make_vec(module_id(env_id), num_envs=3, **kwargs)
    assert remote.shard_sizes == ([3] if sims == 1 else [2, 1])
    assert remote.observation_space == local.observation_space
    assert remote.single_action_space == local.single_action_space
    assert_same(local.reset(seed=3), remote.reset(seed=3))
    for actions in actions_for(local, STEPS, 3):
        assert_same(local.step(actions), remote.step(actions))
    remote.close()

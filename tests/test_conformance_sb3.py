"""Stable-Baselines3's VecEnv contract, a local ``DummyVecEnv`` and the remote
one side by side, on one simulator and split over two.

The behaviours SB3's own VecEnv tests check: ``env_method``, ``get_attr`` and
``set_attr`` (with indices) reach the envs, per-env seeds and reset options,
Dict and Tuple actions given one per env, infos exactly as each env produced
them (values and types), and ``SubprocVecEnv``'s argument checks.
"""

from __future__ import annotations


import numpy as np
import pytest
from conftest import TEST_ENVS_MODULE, local_gym
from test_protocol import assert_same


pytest.importorskip("stable_baselines3")
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.vec_env import SubprocVecEnv  # noqa: E402

from remoterl_ray.sb3 import RemoteVecEnv  # noqa: E402

N = 4


def pair(env_id: str, **kwargs):
    with local_gym():
        local = make_vec_env(env_id, n_envs=N, **kwargs)
    remote = make_vec_env(env_id, n_envs=N, **kwargs)
    assert isinstance(remote, RemoteVecEnv) and not isinstance(local, RemoteVecEnv)
    return local, remote


def same_steps(local, remote, actions) -> None:
    """One step of each gives the same, but for Monitor's wall-clock episode time."""
    expected, got = local.step(actions), remote.step(actions)
    for infos in (expected[3], got[3]):
        for info in infos:
            if "episode" in info:
                info["episode"].pop("t")
    assert_same(expected, got)


def test_env_method_get_attr_set_attr_reach_the_envs(layout):
    local, remote = pair(f"{TEST_ENVS_MODULE}:Curriculum-v0", seed=0)
    for venv in (local, remote):
        venv.reset()
    assert_same(local.get_attr("level"), remote.get_attr("level"))
    assert_same(local.env_method("set_level", 2, bonus=1, indices=[0, 3]),
                remote.env_method("set_level", 2, bonus=1, indices=[0, 3]))
    assert_same(local.get_attr("level"), remote.get_attr("level"))
    local.set_attr("episode_length", 3, indices=[1])
    remote.set_attr("episode_length", 3, indices=[1])
    assert_same(local.get_attr("episode_length", indices=[3, 1]), remote.get_attr("episode_length", indices=[3, 1]))
    actions = np.array([1, 0, 1, 1])
    for _ in range(4):
        same_steps(local, remote, actions)
    assert_same(local.get_attr("steps_taken"), remote.get_attr("steps_taken"))
    assert_same(local.env_method("get_episode_rewards"), remote.env_method("get_episode_rewards"))  # Monitor's
    assert local.env_is_wrapped(type(local.envs[0])) == remote.env_is_wrapped(type(local.envs[0]))
    with pytest.raises(AttributeError):
        local.get_attr("no_such")
    with pytest.raises(AttributeError):
        remote.get_attr("no_such")


def test_per_env_seeds_and_reset_options(layout):
    local, remote = pair(f"{TEST_ENVS_MODULE}:Curriculum-v0")
    for venv in (local, remote):
        venv.seed(11)
        venv.set_options([{"level": 1}, {"level": 2}, {}, {"level": 1}])
    assert_same(local.reset(), remote.reset())
    assert_same(local.reset_infos, remote.reset_infos)
    same_steps(local, remote, np.zeros(N, dtype=np.int64))


@pytest.mark.parametrize("tuple_action", [False, True])
def test_dict_and_tuple_actions_one_per_env(layout, tuple_action):
    local, remote = pair(f"{TEST_ENVS_MODULE}:StructuredAction-v0", seed=5,
                         env_kwargs={"tuple_action": tuple_action})
    assert_same(local.reset(), remote.reset())
    space = local.action_space
    space.seed(0)
    for _ in range(30):
        same_steps(local, remote, [space.sample() for _ in range(N)])


def test_infos_arrive_as_each_env_produced_them(layout):
    """FrozenLake's ``prob`` is a Python float per env; Gymnasium's batched infos would
    retype it, and fill other envs' missing keys with zeros."""
    local, remote = pair("FrozenLake-v1", seed=2)
    assert_same(local.reset(), remote.reset())
    assert_same(local.reset_infos, remote.reset_infos)
    rng = np.random.default_rng(0)
    for _ in range(200):
        same_steps(local, remote, rng.integers(0, 4, size=N))
        assert_same(local.reset_infos, remote.reset_infos)


def test_subproc_vec_env_checks_its_start_method(layout):
    factories = [lambda: __import__("gymnasium").make("CartPole-v1")] * 2
    with local_gym(), pytest.raises(ValueError) as local_error:
        SubprocVecEnv(factories, start_method="illegal")
    with pytest.raises(ValueError) as remote_error:
        SubprocVecEnv(factories, start_method="illegal")
    assert str(remote_error.value) == str(local_error.value)

"""Gymnasium's vector-env contract, local and remote side by side.

Each scenario runs on a local vector env (the functions captured before
``init``) and on a remote one, hosted whole by one simulator and split over
two, and asserts the same results or the same exception type (and, where
Gymnasium words it, message). Modelled on the behaviours Gymnasium's own
vector tests check: ``call``/``get_attr``/``set_attr``, seeding, partial
resets, action checks, both autoreset modes, ``observation_mode``, metadata
and specs.
"""

from __future__ import annotations


import gymnasium as gym
import numpy as np
import pytest
from conftest import TEST_ENVS_MODULE, init_trainer, local_gym, serving
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_differing_spaces
from test_protocol import assert_same

import remoterl_ray
from remoterl_ray import RemoteVectorEnv

CURRICULUM = f"{TEST_ENVS_MODULE}:Curriculum-v0"


def pair(env_id: str, num_envs: int, **kwargs) -> tuple[gym.vector.VectorEnv, RemoteVectorEnv]:
    with local_gym():
        local = gym.make_vec(env_id, num_envs=num_envs, **kwargs)
    assert not isinstance(local, RemoteVectorEnv) and not any(
        isinstance(e, remoterl_ray.RemoteEnv) for e in getattr(local, "envs", ()))
    remote = gym.make_vec(env_id, num_envs=num_envs, **kwargs)
    assert isinstance(remote, RemoteVectorEnv)
    return local, remote


def outcome(call) -> tuple[str, object]:
    """What a call gives: its result, or the type and message of what it raised."""
    try:
        return "ok", call()
    except Exception as exc:  # noqa: BLE001 - compared between local and remote
        return "raised", exc


def assert_same_outcome(local_call, remote_call, *, message: bool = True) -> None:
    (kind_l, local), (kind_r, remote) = outcome(local_call), outcome(remote_call)
    assert kind_l == kind_r, (local, remote)
    if kind_l == "ok":
        assert_same(local, remote)
        return
    assert isinstance(remote, type(local)), (local, remote)
    if message:
        assert str(local) in str(remote), (local, remote)


def test_shards_follow_the_layout(layout):
    _, remote = pair("CartPole-v1", 4, vectorization_mode="sync")
    assert remote.shard_sizes == ([4] if layout == "one" else [2, 2])
    remote.close()


def test_call_get_attr_set_attr_reach_the_simulator_envs(layout):
    local, remote = pair(CURRICULUM, 4, vectorization_mode="sync")
    for env in (local, remote):
        env.reset(seed=0)
    assert_same(local.get_attr("level"), remote.get_attr("level"))
    assert_same(local.call("set_level", 3, bonus=1), remote.call("set_level", 3, bonus=1))
    assert_same(local.get_attr("level"), remote.get_attr("level"))
    local.set_attr("level", [1, 2, 3, 4])
    remote.set_attr("level", [1, 2, 3, 4])
    assert_same(local.get_attr("level"), remote.get_attr("level"))
    local.set_attr("level", 7)
    remote.set_attr("level", 7)
    actions = np.array([1, 0, 1, 0])
    assert_same(local.step(actions), remote.step(actions))
    assert_same(local.get_attr("steps_taken"), remote.get_attr("steps_taken"))
    assert_same(local.call("episode_length"), remote.call("episode_length"))  # not callable: its value
    assert_same_outcome(lambda: local.set_attr("level", [1, 2]), lambda: remote.set_attr("level", [1, 2]))
    assert_same_outcome(lambda: local.get_attr("no_such"), lambda: remote.get_attr("no_such"), message=False)
    with pytest.raises(remoterl_ray.UnsupportedError, match="private"):
        remote.get_attr("_elapsed")
    with pytest.raises(remoterl_ray.UnsupportedError, match="by name"):
        remote.call("get_wrapper_attr", "_elapsed")
    with pytest.raises(remoterl_ray.UnsupportedError, match="only data travels"):
        remote.get_attr("observation_space")  # a live object
    local.close()
    remote.close()


def test_np_random_seed_is_one_per_env(layout):
    local, remote = pair("CartPole-v1", 4, vectorization_mode="sync")
    local.reset(seed=42)
    remote.reset(seed=42)
    assert remote.np_random_seed == local.np_random_seed == (42, 43, 44, 45)
    local, remote = pair("CartPole-v1", 4)  # the vector entry point keeps one seed
    local.reset(seed=42)
    remote.reset(seed=42)
    assert_same(local.np_random_seed, remote.np_random_seed)


def test_partial_reset_masks_across_shards(layout):
    local, remote = pair("CartPole-v1", 3, vectorization_mode="sync")
    assert_same(local.reset(seed=1), remote.reset(seed=1))
    actions = np.array([1, 0, 1])
    for _ in range(3):
        assert_same(local.step(actions), remote.step(actions))
    for mask in ([True, True, False], [False, False, True], [False, True, False]):
        m = np.array(mask)
        assert_same(local.reset(seed=[7, 8, 9], options={"reset_mask": m}), remote.reset(
            seed=[7, 8, 9], options={"reset_mask": m}))
        assert_same(local.step(actions), remote.step(actions))
    for bad in (np.array([True, False]), np.array([1, 0, 1]), [True, True, False], np.zeros(3, dtype=bool)):
        assert_same_outcome(
            lambda: local.reset(options={"reset_mask": bad}), lambda: remote.reset(options={"reset_mask": bad})
        )


def test_wrong_action_batches_raise_what_local_raises(layout):
    local, remote = pair("CartPole-v1", 4, vectorization_mode="sync")
    local.reset(seed=0)
    remote.reset(seed=0)
    for bad in (np.array([0, 1, 0, 1, 1]), 1, np.int64(0)):
        assert_same_outcome(lambda: local.step(bad), lambda: remote.step(bad), message=False)


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_autoreset_modes_equal_local(layout, mode):
    local, remote = pair(CURRICULUM, 4, vectorization_mode="sync", vector_kwargs={"autoreset_mode": mode})
    assert remote.metadata["autoreset_mode"] == mode
    assert_same(local.reset(seed=3), remote.reset(seed=3))
    rng = np.random.default_rng(0)
    for step in range(12):
        actions = rng.integers(0, 2, size=4)
        if mode == AutoresetMode.NEXT_STEP and step == 5:
            actions = np.array([9, 9, 9, 9])  # the autoreset step: every env just ended, actions are ignored
        assert_same(local.step(actions), remote.step(actions))


def test_observation_mode_different_batches_each_envs_space(relay, keys):
    with serving(relay, keys, 2) as key:  # fresh simulators: their envs' bounds are 1, 2 on each
        assert init_trainer(relay, key, num_env_runners=2)
        try:
            remote = gym.make_vec(
                f"{TEST_ENVS_MODULE}:VaryingBounds-v0", 4, vectorization_mode="sync",
                vector_kwargs={"observation_mode": "different"},
            )
            bounds = remote.get_attr("bound")
            assert len(set(bounds)) > 1
            from remoterl_testenvs import VaryingBoundsEnv

            expected = batch_differing_spaces([VaryingBoundsEnv(int(b)).observation_space for b in bounds])
            assert remote.observation_space == expected
            obs, _ = remote.reset(seed=0)
            assert obs in remote.observation_space
        finally:
            remoterl_ray.shutdown()


def test_vector_env_metadata_does_not_leak_into_a_later_single_env(layout):
    remote_vec = gym.make_vec("CartPole-v1", 2, vectorization_mode="sync")
    assert remote_vec.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    single = gym.make("CartPole-v1")
    assert single.metadata == {"render_modes": ["human", "rgb_array"], "render_fps": 50}
    remote_vec.close()
    single.close()


def test_specs_equal_local_and_make_again(layout):
    kwargs = {"render_mode": "rgb_array", "max_episode_steps": 10}
    with local_gym():
        local = gym.make("CartPole-v1", **kwargs)
        local_text = gym.make(f"{TEST_ENVS_MODULE}:EchoText-v0")
    remote = gym.make("CartPole-v1", **kwargs)
    assert remote.spec == local.spec
    again = remote.spec.make()
    assert isinstance(again, remoterl_ray.RemoteEnv) and again.spec == local.spec
    remote_text = gym.make(f"{TEST_ENVS_MODULE}:EchoText-v0")
    assert remote_text.spec == local_text.spec and remote_text.spec.id == "EchoText-v0"
    made = remote_text.spec.make()  # by the id it was made with, module prefix included
    assert made.reset(seed=0)[0] == "none"
    local_vec, remote_vec = pair("CartPole-v1", 3, vectorization_mode="sync")
    assert remote_vec.spec == local_vec.spec
    for env in (again, remote_text, made, remote_vec, remote):
        env.close()

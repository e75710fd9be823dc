"""Trainer in this process, a real relay and two real simulator processes.

Checks that remote envs behave exactly like local ones, that spaces, infos
and renders survive the trip, and that registrations are mirrored only as
the simulator's allowlist says.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from conftest import TEST_ENVS_MODULE, init_trainer
from remoterl_testenvs import AllSpacesEnv, all_spaces

import remoterl_ray
from remoterl_ray import (
    EnvClosedError,
    RegistrationRefusedError,
    RemoteEnv,
    RemoteEnvError,
    RemoteVectorEnv,
    UnknownEnvError,
)
from test_protocol import assert_same

LOCAL_MAKE = gym.make
LOCAL_MAKE_VEC = gym.make_vec


@pytest.fixture
def trainer(relay, two_sims):
    assert init_trainer(relay, two_sims, num_env_runners=4, num_workers=2)
    yield
    remoterl_ray.shutdown()


def rollout(env, actions, seed):
    """Reset, then step; a single env is reset (unseeded) whenever an episode ends."""
    out = [env.reset(seed=seed)]
    for action in actions:
        out.append(env.step(action))
        if not isinstance(env, gym.vector.VectorEnv) and (out[-1][2] or out[-1][3]):
            out.append(env.reset())
    return out


def test_remote_cartpole_equals_local(trainer):
    local = LOCAL_MAKE("CartPole-v1")
    remote = gym.make("CartPole-v1")
    assert isinstance(remote, RemoteEnv) and isinstance(remote, gym.Env)
    assert remote.observation_space == local.observation_space
    assert remote.action_space == local.action_space
    assert remote.spec.id == "CartPole-v1" and remote.spec.max_episode_steps == 500
    rng = np.random.default_rng(0)
    actions = [int(a) for a in rng.integers(0, 2, size=200)]
    for seed in (0, 123):
        expected, got = rollout(local, actions, seed), rollout(remote, actions, seed)
        for e, g in zip(expected, got):
            assert_same(e, g)
    remote.close()


@pytest.mark.parametrize("num_envs", [1, 8])
def test_remote_vector_cartpole_equals_local_sync(trainer, num_envs):
    local = LOCAL_MAKE_VEC("CartPole-v1", num_envs=num_envs, vectorization_mode="sync")
    remote = gym.make_vec("CartPole-v1", num_envs=num_envs, vectorization_mode="sync")
    assert isinstance(remote, RemoteVectorEnv) and isinstance(remote, gym.vector.VectorEnv)
    if num_envs == 8:
        assert remote.shard_sizes == [4, 4]  # both simulators, one frame each per step
    assert remote.observation_space == local.observation_space
    assert remote.single_action_space == local.single_action_space
    assert remote.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    rng = np.random.default_rng(1)
    actions = [rng.integers(0, 2, size=num_envs) for _ in range(300)]  # long enough for autoresets
    expected, got = rollout(local, actions, 42), rollout(remote, actions, 42)
    dones = 0
    for e, g in zip(expected, got):
        assert_same(e, g)
        if len(e) == 5:
            dones += int(np.sum(e[2] | e[3]))
    assert dones > 0  # episodes ended and were autoreset identically
    remote.close()
    assert remote.closed


def test_vector_env_seed_list_and_options_reach_each_shard(trainer):
    remote = gym.make_vec("CartPole-v1", num_envs=6, vectorization_mode="sync")
    local = LOCAL_MAKE_VEC("CartPole-v1", num_envs=6, vectorization_mode="sync")
    seeds = [5, 4, 3, 2, 1, 0]
    assert_same(local.reset(seed=seeds), remote.reset(seed=seeds))
    with pytest.raises(AssertionError, match="num_envs=6"):  # what a local SyncVectorEnv raises
        remote.reset(seed=[1, 2])
    remote.close()


def test_every_space_and_numpy_infos_survive(trainer):
    remote = gym.make(f"{TEST_ENVS_MODULE}:AllSpaces-v0", scale=2.0, render_mode="rgb_array")
    local = AllSpacesEnv(render_mode="rgb_array", scale=2.0)
    assert remote.observation_space == all_spaces()
    assert remote.action_space == local.action_space
    assert remote.metadata["render_fps"] == 4 and remote.render_mode == "rgb_array"
    obs, info = remote.reset(seed=7, options={"k": np.int16(3)})
    assert remote.observation_space.contains(obs)
    assert info["scale"] == 2.0 and info["options"] == {"k": np.int16(3)}
    action = (1, np.array([0.25, -0.5], np.float32))
    obs, reward, terminated, truncated, info = remote.step(action)
    local.reset(seed=7)
    assert_same(local.step(action)[4], info)
    assert reward == 2.0 and terminated is False
    frame = remote.render()
    assert frame.shape == (8, 6, 3) and frame.dtype == np.uint8 and frame[0, 0, 0] == 1
    remote.close()


def test_vector_infos_merge_like_gymnasium(trainer):
    gym.register("CounterRemote-v0", entry_point=f"{TEST_ENVS_MODULE}:CounterEnv")
    try:
        remote = gym.make_vec("CounterRemote-v0", num_envs=5)
        assert len(remote.shard_sizes) == 2
        local = LOCAL_MAKE_VEC("CounterRemote-v0", num_envs=5, vectorization_mode="sync")
        assert_same(local.reset(seed=3), remote.reset(seed=3))
        for action in ([1, 2, 0, 1, 2], [2, 2, 2, 1, 0], [0, 1, 0, 1, 0]):
            assert_same(local.step(np.array(action)), remote.step(np.array(action)))
        remote.close()
    finally:
        gym.registry.pop("CounterRemote-v0", None)


def test_register_is_mirrored_for_allowed_modules(trainer):
    gym.register("MirroredAllSpaces-v3", entry_point=f"{TEST_ENVS_MODULE}:AllSpacesEnv", max_episode_steps=3,
                 kwargs={"scale": 3.0})
    try:
        env = gym.make("MirroredAllSpaces-v3")
        assert env.spec.max_episode_steps == 3
        env.reset(seed=0)
        outcomes = [env.step((0, np.zeros(2, np.float32))) for _ in range(3)]
        assert outcomes[0][1] == 3.0  # kwargs reached the simulator
        assert outcomes[-1][3] is True  # TimeLimit from the mirrored spec truncates at 3
        env.close()
    finally:
        gym.registry.pop("MirroredAllSpaces-v3", None)


def test_register_of_a_module_not_on_the_allowlist_is_refused(trainer):
    gym.register("Sneaky-v0", entry_point="os:system")
    try:
        with pytest.raises(RegistrationRefusedError, match="allowlist") as info:
            gym.make("Sneaky-v0")
        assert "--allow os" in str(info.value)
        with pytest.raises(RegistrationRefusedError, match="allowlist"):
            gym.make("subprocess:Popen-v0")  # Gymnasium would import 'subprocess' for this id
    finally:
        gym.registry.pop("Sneaky-v0", None)


def test_register_of_a_function_needs_it_named_on_the_allowlist(trainer):
    """A module entry allows its env classes; a function runs only if named."""
    gym.register("SpacesFn-v0", entry_point=f"{TEST_ENVS_MODULE}:all_spaces")
    try:
        with pytest.raises(RegistrationRefusedError, match="function") as info:
            gym.make("SpacesFn-v0")
        assert f"--allow {TEST_ENVS_MODULE}:all_spaces" in str(info.value)
    finally:
        gym.registry.pop("SpacesFn-v0", None)


def test_callable_entry_point_stays_local_with_a_warning(trainer, caplog):
    """Libraries register (and make) envs with callables at import time; that
    must not break, and the warning says how to make such an env remote. (A
    module-level class is mirrored by its module:name; a nested one cannot be.)"""

    class NestedEnv(AllSpacesEnv):
        pass

    try:
        gym.register("Callable-v0", entry_point=NestedEnv)
        with caplog.at_level("WARNING", logger="remoterl"):
            env = gym.make("Callable-v0")
        assert isinstance(env.unwrapped, NestedEnv) and not isinstance(env, RemoteEnv)
        assert "module:attr" in caplog.text and "module level" in caplog.text and "Callable-v0" in caplog.text
        env.close()
    finally:
        gym.registry.pop("Callable-v0", None)


def test_unknown_env_id_raises_a_typed_error(trainer):
    with pytest.raises(UnknownEnvError) as info:
        gym.make("DoesNotExist-v9")
    assert info.value.code.value == "unknown_env" and info.value.remote_type


def test_an_invalid_action_raises_what_the_env_raises_and_the_env_keeps_working(trainer):
    """The simulator does not judge actions: the env does, as locally (CartPole asserts)."""
    local = LOCAL_MAKE("CartPole-v1")
    env = gym.make("CartPole-v1")
    local.reset(seed=0)
    env.reset(seed=0)
    for bad in (7, -1, 0.5, "left", [0, 1], None):
        with pytest.raises(Exception) as expected:
            local.step(bad)
        with pytest.raises(remoterl_ray.RemoteEnvError) as got:
            env.step(bad)
        assert isinstance(got.value, type(expected.value)), (bad, got.value)
    obs, *_ = env.step(1)
    assert obs.shape == (4,)
    vec = gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync")
    vec.reset(seed=0)
    with pytest.raises(AssertionError):
        vec.step(np.array([0, 1, 2, 0]))
    vec.step(np.array([0, 1, 1, 0]))
    vec.close()
    env.close()


def test_env_errors_carry_the_remote_exception_type(trainer):
    env = gym.make("CartPole-v1")
    with pytest.raises(RemoteEnvError) as info:
        env.step(0)  # before reset: Gymnasium's OrderEnforcing raises ResetNeeded on the simulator
    assert info.value.remote_type == "gymnasium.error.ResetNeeded"
    env.close()


def test_step_after_close_raises(trainer):
    env = gym.make("CartPole-v1")
    env.reset(seed=0)
    env.close()
    env.close()  # idempotent
    with pytest.raises(EnvClosedError):
        env.step(0)
    vec = gym.make_vec("CartPole-v1", num_envs=2)
    vec.close()
    with pytest.raises(EnvClosedError):
        vec.step(np.array([0, 0]))


def test_make_vec_with_wrappers_is_refused_clearly(trainer):
    with pytest.raises(remoterl_ray.UnsupportedError, match="wrappers"):
        gym.make_vec("CartPole-v1", num_envs=2, wrappers=[lambda e: e])


def test_envs_spread_over_simulators_by_num_env_runners(relay, two_sims):
    assert init_trainer(relay, two_sims, num_env_runners=2)
    try:
        # 2 simulators, at most 2 envs each while there are enough: 3 envs -> 2 + 1
        assert gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync").shard_sizes == [2, 1]
        # too few simulators for 2 per simulator: never refused, spread over those there are
        assert gym.make_vec("CartPole-v1", num_envs=9, vectorization_mode="sync").shard_sizes == [5, 4]
        # one simulator is enough for 2 envs
        assert len(gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync").shard_sizes) == 1
        # a vector entry point (CartPole's default) vectorises in one object: never split
        assert gym.make_vec("CartPole-v1", num_envs=9).shard_sizes == [9]
    finally:
        remoterl_ray.shutdown()


def test_relay_counts_bytes_and_env_steps_per_connection(relay, two_sims, trainer):
    def me():
        peer_id = remoterl_ray.current_session().links.conn.welcome.peer_id
        return next(p for p in relay.peers(two_sims, "trainer") if p["id"] == peer_id)

    vec = gym.make_vec("CartPole-v1", num_envs=6, vectorization_mode="sync")
    vec.reset(seed=0)
    before = me()
    for _ in range(10):
        vec.step(np.zeros(6, dtype=np.int64))
    after = me()
    assert after["env_steps"] - before["env_steps"] == 60  # counted from headers: 10 steps x 6 envs
    assert after["bytes_in"] > before["bytes_in"] and after["bytes_out"] > before["bytes_out"]
    assert after["frames_in"] - before["frames_in"] == 20  # one frame per shard per step
    vec.close()

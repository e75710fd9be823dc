"""Stepping without lockstep: ``step_async``/``step_wait`` as Gymnasium's
``AsyncVectorEnv`` has them, and EnvPool-style ``send``/``recv`` that returns
the first shards to answer, on real simulators behind a real relay."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from conftest import SimulatorPool, init_trainer, local_gym
from gymnasium.error import AlreadyPendingCallError, NoAsyncCallError

import remoterl_ray
from remoterl_ray.api import trainer_settings
from remoterl_ray.protocol.errors import SimulatorLostError
from remoterl_ray.trainer.remote_vector_env import RemoteVectorEnv
from remoterl_ray.trainer.session import TrainerSession


@pytest.fixture(scope="module")
def gate(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gate") / "closed"


@pytest.fixture(scope="module")
def trainer(relay, keys, gate) -> Iterator[None]:
    """Two simulators: one answers at once, the other's GatedCounter steps wait while ``gate`` exists."""
    pool = SimulatorPool(relay, keys.take())
    pool.start(1)
    pool.start(1, env={"REMOTERL_TEST_GATE": str(gate)})
    assert init_trainer(relay, pool.key, num_env_runners=2)  # at most 2 envs per simulator: 2 shards of 2
    try:
        yield
    finally:
        remoterl_ray.shutdown()
        pool.stop()


def test_step_async_and_step_wait_keep_async_vector_envs_contract(trainer):
    remote = gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync")
    with local_gym():
        local = gym.vector.AsyncVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(4)])
        reference = gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync")
    try:
        assert isinstance(remote, RemoteVectorEnv) and remote.shard_sizes == [2, 2]
        for env in (remote, local):
            with pytest.raises(NoAsyncCallError):
                env.step_wait()
            env.reset(seed=3)
            env.step_async(np.ones(4, dtype=np.int64))
            with pytest.raises(AlreadyPendingCallError):
                env.step_async(np.ones(4, dtype=np.int64))
            with pytest.raises(AlreadyPendingCallError):
                env.reset(seed=3)
            env.step_wait()
        np.testing.assert_array_equal(remote.reset(seed=7)[0], reference.reset(seed=7)[0])
        for t in range(30):  # past CartPole's first terminations: autoreset alike
            actions = np.array([t % 2, 1, 0, (t // 3) % 2])
            remote.step_async(actions)
            got, expected = remote.step_wait(), reference.step(actions)
            for g, e in zip(got[:4], expected[:4]):
                np.testing.assert_array_equal(g, e)
    finally:
        for env in (remote, local, reference):
            env.close()


def test_recv_returns_the_first_shards_while_a_slow_one_is_still_stepping(trainer, gate):
    envs = gym.make_vec("remoterl_testenvs:GatedCounter-v0", num_envs=4, vectorization_mode="sync")
    try:
        start = envs.reset(seed=0)[0][:, 0].copy()
        gate.touch()  # the gated simulator's steps wait from now on
        envs.send(np.ones(4, dtype=np.int64))
        fast = None
        for _ in range(3):
            obs, rewards, terminated, truncated, info = envs.recv(envs=2)
            fast = info["env_id"] if fast is None else fast
            np.testing.assert_array_equal(info["env_id"], fast)  # the gated shard cannot have answered
            assert obs.shape == (2, 2) and rewards.shape == terminated.shape == truncated.shape == (2,)
            with pytest.raises(ValueError, match="stepping"):
                envs.send(np.ones(4, dtype=np.int64), np.arange(4))
            envs.send(np.ones(2, dtype=np.int64), info["env_id"])
        gate.unlink()
        obs, _, _, _, info = envs.recv()  # everything in flight: the fast shard's 4th step, the slow one's 1st
        ids = info["env_id"]
        assert sorted(ids.tolist()) == [0, 1, 2, 3]
        slow = np.setdiff1d(ids, fast)
        counts = dict(zip(ids.tolist(), obs[:, 0]))
        assert [counts[i] - start[i] for i in fast] == [4, 4]
        assert [counts[i] - start[i] for i in slow] == [1, 1]
        with pytest.raises(NoAsyncCallError):
            envs.recv()
    finally:
        if gate.exists():
            gate.unlink()
        envs.close()


def test_send_and_recv_step_each_env_as_a_local_one(trainer):
    envs = gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync")
    with local_gym():
        singles = [gym.make_vec("CartPole-v1", num_envs=1, vectorization_mode="sync") for _ in range(4)]
    try:
        obs = envs.reset(seed=11)[0]
        for i, single in enumerate(singles):
            np.testing.assert_array_equal(single.reset(seed=11 + i)[0][0], obs[i])
        with pytest.raises(ValueError, match="whole shards"):
            envs.send(np.ones(1, dtype=np.int64), [1])
        with pytest.raises(ValueError, match="actions|length|zip"):
            envs.send(np.ones(3, dtype=np.int64))
        envs.send(np.ones(4, dtype=np.int64))
        steps = 0
        while steps < 120:
            obs, rewards, terminated, truncated, info = envs.recv(envs=2)
            for k, i in enumerate(info["env_id"]):
                expected = singles[i].step(np.ones(1, dtype=np.int64))
                np.testing.assert_array_equal(obs[k], expected[0][0])
                assert (rewards[k], terminated[k], truncated[k]) == (
                    expected[1][0],
                    expected[2][0],
                    expected[3][0],
                )
                steps += 1
            envs.send(np.ones(len(info["env_id"]), dtype=np.int64), info["env_id"])
        envs.recv()  # what is still in flight
    finally:
        envs.close()
        for single in singles:
            single.close()


def test_a_simulator_lost_between_sends_costs_only_its_own_shard(relay, keys, tmp_path):
    """The other shard's step stays out and comes back; nothing is left waiting or spinning."""
    gate = tmp_path / "closed"
    pool = SimulatorPool(relay, keys.take())
    fast = pool.start(1)[0]
    pool.start(1, env={"REMOTERL_TEST_GATE": str(gate)})
    session = TrainerSession(trainer_settings(pool.key, relay.url, num_env_runners=2, timeout=30.0, resume_window=1))
    try:
        assert session.links.wait_for_simulators(2, 30) == 2
        envs = RemoteVectorEnv(session, "remoterl_testenvs:GatedCounter-v0", 4, vectorization_mode="sync")
        start = envs.reset(seed=0)[0][:, 0].copy()
        gate.touch()
        envs.send(np.ones(4, dtype=np.int64))
        ids = envs.recv(envs=2)[4]["env_id"]
        lost_shard = 0 if ids[0] == 0 else 1
        channel = envs._remote.channels[lost_shard]
        fast.kill()  # the fast shard's simulator is gone (and does not resume within the 1 s window)
        assert session.links.conn.wait_until(lambda: channel in session.links.conn.protocol.paused, 30)
        with pytest.raises(SimulatorLostError, match="resume window"):
            envs.send(np.ones(2, dtype=np.int64), ids)
        gate.unlink()
        obs, _, _, _, info = envs.recv()
        assert info["env_id"].tolist() == [i for i in range(4) if i not in ids]
        assert (obs[:, 0] - start[info["env_id"]]).tolist() == [1, 1]
        with pytest.raises(NoAsyncCallError):
            envs.recv()
        assert not [p for p in session.links.conn.protocol.pending.values() if p.channel in envs._remote.channels]
        envs.close()
    finally:
        session.close()
        pool.stop()


def test_closing_with_steps_out_leaves_nothing_awaited(trainer):
    session = remoterl_ray.current_session()
    for start in ("step_async", "send"):
        envs = gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync")
        envs.reset(seed=0)
        getattr(envs, start)(np.ones(4, dtype=np.int64))
        channels = set(envs._remote.channels)
        envs.close()
        assert not [p for p in session.links.conn.protocol.pending.values() if p.channel in channels], start
        assert not channels & session.links.conn.protocol.channels


def test_send_and_recv_refuse_what_step_async_is_waiting_for(trainer):
    envs = gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync")
    try:
        envs.reset(seed=0)
        envs.step_async(np.ones(4, dtype=np.int64))
        with pytest.raises(AlreadyPendingCallError):
            envs.recv()
        with pytest.raises(AlreadyPendingCallError):
            envs.send(np.ones(4, dtype=np.int64))
        for call in (lambda: envs.get_attr("render_mode"), lambda: envs.call("render"), envs.render):
            with pytest.raises(AlreadyPendingCallError):  # as AsyncVectorEnv: attributes wait for no step
                call()
        envs.step_wait()
        with pytest.raises(ValueError, match="at least one env"):
            envs.recv(envs=0)
        envs.send(np.ones(2, dtype=np.int64), [0, 1])
        assert envs.get_attr("render_mode") == (None,) * 4  # answered after the step on its simulator
        envs.set_attr("foo", 1)
        ids, obs, *_ = envs.recv_with_ids()  # the step sent before them is still there
        assert ids.tolist() == [0, 1] and obs.shape == (2, 4)
        envs.send(np.ones(2, dtype=np.int64), [0, 1])
        envs.drop_sent()  # forgotten, not waited for: a reset may follow at once
        with pytest.raises(NoAsyncCallError):
            envs.recv()
        obs, _ = envs.reset(seed=1)
        assert obs.shape == (4, 4) and len(envs.get_attr("render_mode")) == 4
    finally:
        envs.close()


def test_a_collected_vector_env_is_closed_by_the_next_call_not_by_its_finalizer(trainer):
    """Garbage collection can run inside this very connection's send; the finalizer
    only hands the envs back, and the next make closes them on the simulators."""
    session = remoterl_ray.current_session()
    envs = gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync")
    envs.reset(seed=0)
    channels = set(envs._remote.channels)
    del envs
    gc.collect()
    assert {ch for _, group in session.released_later for ch in group} == channels
    assert channels <= session.links.conn.protocol.channels  # nothing sent from the finalizer
    other = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync")
    assert not session.released_later and not channels & session.links.conn.protocol.channels
    other.close()

"""``FirstReadyEnvRunner`` on real simulators behind a real relay: with one
simulator it samples exactly what RLlib's own lockstep runner samples; with a
simulator that cannot answer, the other one's envs keep stepping, and the step
in flight lands, with the action actually sent, in the next ``sample()``.
Env runners are built in this process, as in RLlib's own env runner tests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import SimulatorPool
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

from remoterl_ray.api import trainer_settings
from remoterl_ray.protocol.errors import RemoteTimeoutError
from remoterl_ray.rllib import FirstReadyEnvRunner, RemoteEnvRunner, use_remote_env_runners

NUM_ENVS = 4


def config(env: str = "CartPole-v1") -> PPOConfig:
    return (
        PPOConfig()
        .environment(env)
        .env_runners(num_envs_per_env_runner=NUM_ENVS, rollout_fragment_length=16)
        .debugging(seed=7)
    )


def remote(cls: type, key: str, relay, base: PPOConfig, timeout: float = 30.0) -> SingleAgentEnvRunner:
    settings = trainer_settings(key, relay.url, num_workers=2, num_env_runners=NUM_ENVS // 2, timeout=timeout)
    return cls(config=use_remote_env_runners(base.env_runners(env_runner_cls=cls), settings))


def trajectories(runner: SingleAgentEnvRunner, calls: int) -> list[list[tuple]]:
    """What each ``sample()`` call returned: per episode chunk, its id-free content."""
    out = []
    try:
        for _ in range(calls):
            episodes = runner.sample(num_timesteps=24, explore=True)
            out.append(
                sorted(
                    (
                        e.t_started,
                        e.is_done,
                        np.asarray(e.get_observations()).round(6).tobytes(),
                        np.asarray(e.get_actions()).tobytes(),
                        np.asarray(e.get_rewards()).tobytes(),
                    )
                    for e in episodes
                )
            )
    finally:
        runner.stop()
    return out


@pytest.fixture(scope="module")
def one_sim(relay, keys) -> Iterator[str]:
    pool = SimulatorPool(relay, keys.take())
    pool.start(1)
    yield pool.key
    pool.stop()


def test_with_one_simulator_it_samples_what_the_lockstep_runners_sample(relay, one_sim):
    local = trajectories(SingleAgentEnvRunner(config=config()), 4)
    lockstep = trajectories(remote(RemoteEnvRunner, one_sim, relay, config()), 4)
    first_ready = trajectories(remote(FirstReadyEnvRunner, one_sim, relay, config()), 4)
    assert lockstep == local
    assert first_ready == local


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("gate") / "closed"
    yield path
    if path.exists():
        path.unlink()


@pytest.fixture
def opened(gate: Path) -> Iterator[Path]:
    """The gate, open again after each test whatever happened."""
    yield gate
    if gate.exists():
        gate.unlink()


@pytest.fixture(scope="module")
def near_and_stuck(relay, keys, gate) -> Iterator[str]:
    """Two simulators: one answers at once, the other's steps wait while ``gate`` exists."""
    pool = SimulatorPool(relay, keys.take())
    pool.start(1)
    pool.start(1, env={"REMOTERL_TEST_GATE": str(gate)})
    yield pool.key
    pool.stop()


def counter_steps_are_consistent(episode) -> None:
    """A ``GatedCounter`` obs is (count, last action): each step's obs follows from the recorded action."""
    obs, actions = np.asarray(episode.get_observations()), np.asarray(episode.get_actions())
    assert len(actions) == len(episode) > 0
    np.testing.assert_array_equal(obs[1:, 0], obs[:-1, 0] + actions)
    np.testing.assert_array_equal(obs[1:, 1], actions)
    np.testing.assert_array_equal(episode.get_rewards(), actions.astype(np.float32))


def test_a_stuck_simulator_does_not_hold_back_the_other_ones_envs(relay, near_and_stuck, opened):
    gate = opened
    runner = remote(FirstReadyEnvRunner, near_and_stuck, relay, config("remoterl_testenvs:GatedCounter-v0"))
    try:
        assert runner.env.unwrapped.shard_sizes == [2, 2]
        runner.sample(num_timesteps=4, explore=True)  # both simulators answer while the gate is open
        gate.touch()
        stuck_while_closed: set = set()
        for call in range(3):  # the first call may still get the step the stuck one sent before the gate shut
            episodes = runner.sample(num_timesteps=8, explore=True)
            assert 8 <= sum(len(e) for e in episodes) <= 8 + NUM_ENVS
            for episode in episodes:
                counter_steps_are_consistent(episode)
            if call > 0:  # from now on every step comes from the near simulator's two envs
                assert len(episodes) == 2 and sum(len(e) for e in episodes) == 8
                stuck_while_closed = {e.id_ for e in runner._ongoing_episodes} - {e.id_ for e in episodes}
        assert len(stuck_while_closed) == 2
        gate.unlink()
        episodes = runner.sample(num_timesteps=16, explore=True)
        stuck = [e for e in episodes if e.id_ in stuck_while_closed]
        assert len(stuck) == 2, "the step in flight lands in the next sample with the action that was sent"
        for episode in episodes:
            counter_steps_are_consistent(episode)
    finally:
        runner.stop()


def test_a_simulator_stuck_past_the_timeout_takes_rllibs_error_path_and_the_runner_recovers(
    relay, near_and_stuck, opened
):
    gate = opened
    strict = config("remoterl_testenvs:GatedCounter-v0").fault_tolerance(restart_failed_sub_environments=False)
    runner = remote(FirstReadyEnvRunner, near_and_stuck, relay, strict, timeout=2.0)
    try:
        runner.sample(num_timesteps=4, explore=True)
        time.sleep(2.5)  # a learner update longer than the timeout, with envs in flight: not a timeout
        assert runner.env.unwrapped.get_attr("count")  # between samples the vector env answers (a curriculum)
        runner.sample(num_timesteps=8, explore=True)
        gate.touch()  # the near simulator keeps answering: only the session timeout can tell the stuck one
        with pytest.raises(RuntimeError) as raised:
            runner.sample(num_timesteps=10**6, explore=True)
        chain, exc = [], raised.value
        while exc is not None:
            chain.append(type(exc))
            exc = exc.__cause__
        assert RemoteTimeoutError in chain, chain
        gate.unlink()
        seen: set[int] = set()  # every env steps again: none is left behind as in flight
        for _ in range(20):
            runner.sample(num_timesteps=16, explore=True)
            seen |= {i for i, e in enumerate(runner._ongoing_episodes) if e.t > 0}
            if len(seen) == NUM_ENVS:
                break
        assert seen == set(range(NUM_ENVS))
    finally:
        runner.stop()

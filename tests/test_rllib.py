"""RLlib's RemoteEnvRunner and Tune on real simulators, modelled on RLlib's own
tests for SingleAgentEnvRunner (rllib/env/tests/test_single_agent_env_runner.py)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
import torch
from conftest import TEST_ENVS_ALLOW, TEST_ENVS_MODULE, CrashableRelay, SimulatorPool, init_trainer, serving
from ray import tune
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.env.env_errors import StepFailedRecreateEnvError
from ray.rllib.examples.envs.classes.multi_agent import MultiAgentCartPole
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME

import remoterl_ray
from remoterl_ray.api import trainer_settings
from remoterl_ray.protocol.errors import SimulatorLostError, UnsupportedError
from remoterl_ray.rllib import (
    EnvCreator,
    FirstReadyEnvRunner,
    RemoteEnvRunner,
    RemoteMultiAgentEnvRunner,
    use_remote_env_runners,
)
from remoterl_ray.trainer.remote_vector_env import RemoteVectorEnv

NUM_ENVS = 4
RUNNERS = pytest.mark.parametrize("runner_cls", [RemoteEnvRunner, FirstReadyEnvRunner], ids=["lockstep", "first_ready"])


def remote_config(relay, key, env="CartPole-v1", **env_runners):
    settings = trainer_settings(key, relay.url, num_workers=2, num_env_runners=NUM_ENVS // 2, timeout=30.0)
    env_runners.setdefault("num_envs_per_env_runner", NUM_ENVS)
    env_runners.setdefault("rollout_fragment_length", 16)
    config = PPOConfig().environment(env).env_runners(**env_runners)
    return use_remote_env_runners(config, settings)


@pytest.fixture(params=[RemoteEnvRunner, FirstReadyEnvRunner], ids=["lockstep", "first_ready"])
def runner(request, relay, two_sims):
    runner = request.param(config=remote_config(relay, two_sims))
    yield runner
    runner.stop()


def test_env_is_a_remote_vector_env_over_both_simulators(runner):
    assert isinstance(runner.env.unwrapped, RemoteVectorEnv)
    assert runner.env.unwrapped.shard_sizes == [2, 2]
    assert runner.num_envs == NUM_ENVS


def test_sample_by_timesteps_and_by_episodes(runner):
    with pytest.raises(AssertionError):
        runner.sample(num_timesteps=10, num_episodes=10, random_actions=True)
    for _ in range(3):
        episodes = runner.sample(num_episodes=6, random_actions=True)
        assert len(episodes) == 6
        assert all(e.is_done and e.t_started == 0 for e in episodes)
    runner.sample(random_actions=True)
    for target in (20, 22):  # 22: not a multiple of the number of envs
        for _ in range(5):
            episodes = runner.sample(num_timesteps=target, random_actions=True)
            assert target <= sum(len(e) for e in episodes) <= target + NUM_ENVS
            assert any(e.t_started > 0 for e in episodes)
    episodes = runner.sample(random_actions=True)  # rollout_fragment_length per env
    assert NUM_ENVS * 16 <= sum(len(e) for e in episodes) <= (NUM_ENVS + 1) * 16


def test_force_reset_and_episode_continuation(runner):
    runner.sample(num_timesteps=8, random_actions=True, force_reset=True)
    first = runner.sample(num_timesteps=8, random_actions=True)
    ongoing = {e.id_: e for e in first if not e.is_done}
    assert ongoing
    second = runner.sample(num_timesteps=8, random_actions=True)
    continued = [e for e in second if e.id_ in ongoing]
    assert continued, "ongoing episodes continue in the next sample call"
    for chunk in continued:
        assert chunk.t_started == ongoing[chunk.id_].t_started + len(ongoing[chunk.id_])
    fresh = runner.sample(num_timesteps=8, random_actions=True, force_reset=True)
    assert all(e.t_started == 0 for e in fresh)
    assert not {e.id_ for e in fresh} & set(ongoing)


def test_get_state_and_set_state(relay, two_sims):
    config = remote_config(relay, two_sims)
    first = RemoteEnvRunner(config=config)
    second = RemoteEnvRunner(config=config)
    try:
        first.sample(num_timesteps=40, random_actions=True)
        state = first.get_state()
        state[NUM_ENV_STEPS_SAMPLED_LIFETIME] = 1234  # what the algorithm syncs
        second.set_state(state)
        assert second.num_env_steps_sampled_lifetime == 1234
        second.sample(num_timesteps=8)  # the synced module drives the remote envs
        weights = first.module.get_state()
        for name, value in second.module.get_state().items():
            np.testing.assert_array_equal(value, weights[name])
    finally:
        first.stop()
        second.stop()


def test_stop_twice_releases_the_remote_envs(relay, two_sims):
    runner = RemoteEnvRunner(config=remote_config(relay, two_sims))
    assert sum(p["hosted_envs"] for p in relay.peers(two_sims, "simulator")) >= NUM_ENVS
    runner.stop()
    runner.stop()
    assert runner.env.closed
    with pytest.raises(Exception):
        runner.env.step(np.zeros(NUM_ENVS, dtype=np.int64))


class CountingCallbacks(RLlibCallback):
    counts: Counter = Counter()

    def on_environment_created(self, **kwargs):
        CountingCallbacks.counts["env_created"] += 1

    def on_episode_created(self, **kwargs):
        CountingCallbacks.counts["created"] += 1

    def on_episode_start(self, **kwargs):
        CountingCallbacks.counts["start"] += 1

    def on_episode_step(self, **kwargs):
        CountingCallbacks.counts["step"] += 1

    def on_episode_end(self, **kwargs):
        CountingCallbacks.counts["end"] += 1


@RUNNERS
def test_callback_counts(relay, two_sims, runner_cls):
    CountingCallbacks.counts.clear()
    config = remote_config(relay, two_sims).callbacks(CountingCallbacks)
    runner = runner_cls(config=config)
    try:
        episodes = runner.sample(num_episodes=5, random_actions=True)
        counts = CountingCallbacks.counts
        assert counts["env_created"] == 1
        assert counts["end"] == 5
        assert counts["start"] >= 5 and counts["created"] >= counts["start"]
        assert counts["step"] >= sum(len(e) for e in episodes)
        counts.clear()
        episodes = runner.sample(num_timesteps=200, random_actions=True)
        ended = sum(e.is_done for e in episodes)
        assert ended >= 1 and counts["end"] == ended
        assert counts["step"] == sum(len(e) for e in episodes)  # one per env step, none for a reset
        assert counts["created"] == NUM_ENVS + counts["end"]  # after sampling episodes every env is reset
    finally:
        runner.stop()


def test_registered_creator_runs_on_the_simulators(relay, keys):
    with serving(relay, keys, 2) as key:
        assert init_trainer(relay, key, num_workers=2, num_env_runners=2)
        try:
            tune.register_env("Corridor", f"{TEST_ENVS_MODULE}:make_corridor")
            config = (
                PPOConfig()
                .environment("Corridor", env_config={"length": 3})
                .env_runners(num_envs_per_env_runner=4)
            )
            runner = RemoteEnvRunner(config=use_remote_env_runners(config))
            obs, _ = runner.env.reset(seed=0)
            np.testing.assert_array_equal(np.asarray(obs)[:, 2], [0, 1, 2, 3])  # vector_index per sub-env
            episodes = runner.sample(num_episodes=4, explore=True)
            assert all(e.is_done for e in episodes)
            runner.stop()
        finally:
            remoterl_ray.shutdown()


def test_lambda_creator_is_refused_with_what_to_do(relay, two_sims):
    assert init_trainer(relay, two_sims, num_workers=2)
    try:
        with pytest.raises(UnsupportedError, match="module:function|'my_pkg.envs:make_env'"):
            tune.register_env("Nope", lambda config: None)
        tune.register_env("Named", EnvCreator(f"{TEST_ENVS_MODULE}:make_corridor"))
    finally:
        remoterl_ray.shutdown()
    tune.register_env("LocalLambda", lambda config: None)  # after shutdown Ray's own rules apply


@RUNNERS
def test_lost_simulator_recreates_the_env(relay, keys, runner_cls):
    key = keys.take()
    pool = SimulatorPool(relay, key)
    pool.start(2)
    settings = trainer_settings(key, relay.url, num_workers=2, num_env_runners=2, timeout=30.0, resume_window=1.0)
    config = AlgorithmConfig().environment("CartPole-v1").env_runners(num_envs_per_env_runner=4)
    config = use_remote_env_runners(config.fault_tolerance(restart_failed_sub_environments=True), settings)
    runner = runner_cls(config=config)
    strict = runner_cls(config=use_remote_env_runners(config.copy().fault_tolerance(
        restart_failed_sub_environments=False), settings))
    try:
        runner.sample(num_timesteps=20, random_actions=True)
        strict.sample(num_timesteps=20, random_actions=True)
        pool.procs[0].kill()
        episodes = runner.sample(num_timesteps=40, random_actions=True)
        assert sum(len(e) for e in episodes) >= 40
        assert runner.env.unwrapped.shard_sizes == [4]  # recreated on the simulator still online
        with pytest.raises(RuntimeError) as raised:
            strict.sample(num_timesteps=40, random_actions=True)
        chain, exc = [], raised.value
        while exc is not None:
            chain.append(type(exc))
            exc = exc.__cause__
        assert StepFailedRecreateEnvError in chain and SimulatorLostError in chain
    finally:
        runner.stop()
        strict.stop()
        pool.stop()


# -- on a Ray cluster -------------------------------------------------------------


def test_two_env_runners_over_two_simulators(ray_cluster, relay, keys):
    with serving(relay, keys, 2) as key:
        config = remote_config(relay, key).env_runners(num_envs_per_env_runner=2)
        actor = ray.remote(num_cpus=1)(RemoteEnvRunner)
        runners = [actor.remote(config=config) for _ in range(2)]
        results = ray.get([r.sample.remote(random_actions=True) for r in runners], timeout=120)
        for episodes in results:
            assert 2 * 16 <= sum(len(e) for e in episodes) < 2 * 17
        hosted = sorted(p["hosted_envs"] for p in relay.peers(key, "simulator"))
        assert hosted == [2, 2], "each env runner's envs went to its own simulator"
        ray.get([r.stop.remote() for r in runners], timeout=60)


def trained_after_init(
    relay, keys, config: AlgorithmConfig, runner_cls: type, allow: tuple[str, ...] = TEST_ENVS_ALLOW
) -> tuple[dict, list[dict]]:
    """``config`` built after ``init`` on two simulators and trained twice: the last
    result and the simulators' rows on the relay."""
    with serving(relay, keys, 2, allow) as key:
        assert init_trainer(relay, key, num_workers=2, num_env_runners=2)
        try:
            algo = config.build_algo()
            assert algo.config.env_runner_cls is runner_cls
            for _ in range(2):
                result = algo.train()
            peers = relay.peers(key, "simulator")
            algo.stop()
            return result, peers
        finally:
            remoterl_ray.shutdown()


def test_unchanged_ppo_trains_remotely_after_init(ray_cluster, relay, keys):
    config = (
        PPOConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=2)
        .training(train_batch_size_per_learner=256, minibatch_size=64, num_epochs=1)
    )
    result, simulators = trained_after_init(relay, keys, config, RemoteEnvRunner)
    runners = result["env_runners"]
    assert runners["num_env_steps_sampled_lifetime"] >= 512
    remote = runners["remoterl"]
    assert remote["simulators"] == 2
    assert remote["step_latency_p50_ms"] > 0 and remote["bytes_received"] > 0
    assert sum(p["env_steps"] for p in simulators) >= 512


def off_policy_config(name: str) -> AlgorithmConfig:
    """A small DQN or SAC (learning after 64 steps), as the first-ready runner is offered for. (APPO
    trains on it too, run by hand: its iterations last 10 s each, too long for the suite.)"""
    if name == "SAC":
        from ray.rllib.algorithms.sac import SACConfig

        config = SACConfig().environment("Pendulum-v1")  # continuous actions: clipped for the env, kept as sampled
    else:
        from ray.rllib.algorithms.dqn import DQNConfig

        config = DQNConfig().environment("CartPole-v1")
    return config.training(num_steps_sampled_before_learning_starts=64, train_batch_size_per_learner=32).reporting(
        min_sample_timesteps_per_iteration=128
    )


@pytest.mark.parametrize("algorithm", ["DQN", "SAC"])
def test_off_policy_and_async_algorithms_train_on_first_ready_env_runners(ray_cluster, relay, keys, algorithm):
    config = off_policy_config(algorithm).env_runners(
        env_runner_cls=FirstReadyEnvRunner, num_env_runners=1, num_envs_per_env_runner=4
    )
    result, simulators = trained_after_init(relay, keys, config, FirstReadyEnvRunner)
    assert result["env_runners"]["num_env_steps_sampled_lifetime"] >= 256
    assert result["env_runners"]["remoterl"]["simulators"] == 2
    assert sum(p["env_steps"] for p in simulators) >= 256


# -- multi-agent: RLlib's multi-agent CartPole with two policies ----------------------------------

MULTI_AGENT_ALLOW = (*TEST_ENVS_ALLOW, "ray.rllib.examples.envs.classes.multi_agent")


def multi_agent_cartpole(**training: Any) -> PPOConfig:
    """An unchanged multi-agent config, as RLlib's own multi-agent CartPole example writes it."""
    training = {"train_batch_size_per_learner": 256, "minibatch_size": 64, "num_epochs": 1, **training}
    return (
        PPOConfig()
        .environment(MultiAgentCartPole, env_config={"num_agents": 2})
        .multi_agent(policies={"p0", "p1"}, policy_mapping_fn=lambda agent_id, episode, **kw: f"p{agent_id}")
        .env_runners(num_env_runners=2)
        .training(**training)
    )


def test_multi_agent_ppo_with_two_policies_trains_on_remote_env_runners(ray_cluster, relay, keys):
    result, simulators = trained_after_init(
        relay, keys, multi_agent_cartpole(), RemoteMultiAgentEnvRunner, MULTI_AGENT_ALLOW
    )
    runners = result["env_runners"]
    assert runners["num_env_steps_sampled_lifetime"] >= 512
    assert set(runners["module_episode_returns_mean"]) == {"p0", "p1"}  # both policies' agents acted
    assert runners["remoterl"]["simulators"] == 2
    assert set(result["learners"]) >= {"p0", "p1"}
    assert sum(p["env_steps"] for p in simulators) >= 512


def test_multi_agent_tune_grid_runs_on_remote_env_runners(ray_cluster, relay, keys, tmp_path):
    with serving(relay, keys, 2, MULTI_AGENT_ALLOW) as key:
        assert init_trainer(relay, key, num_workers=2, num_env_runners=2)
        try:
            config = multi_agent_cartpole(lr=tune.grid_search([1e-3, 1e-4]))
            tuner = tune.Tuner(
                "PPO",
                param_space=config,
                run_config=tune.RunConfig(stop={"training_iteration": 2}, storage_path=str(tmp_path), verbose=0),
            )
            results = tuner.fit()
        finally:
            remoterl_ray.shutdown()
    assert not results.errors
    assert len(results) == 2
    for result in results:
        assert result.metrics["training_iteration"] == 2
        assert result.metrics["env_runners"]["remoterl"]["simulators"] == 2
        assert set(result.metrics["env_runners"]["module_episode_returns_mean"]) == {"p0", "p1"}
    logged = "".join(p.read_text(errors="ignore") for p in Path(tmp_path).rglob("*.json"))
    assert logged and key not in logged, "the API key must not be written to Tune's logs"


def test_ppo_through_relay_crashes_learns_exactly_what_it_learns_without_one(ray_cluster):
    """PPO with 2 env runners trains twice with the same seed; in the second run the relay
    is SIGKILLed and restarted while the env runners sample, and again between iterations.
    Same steps, same returns, same weights."""

    def crash_while_sampling(site: CrashableRelay, steps: int) -> threading.Thread:
        def watch() -> None:
            deadline = time.monotonic() + 60
            while sum(p["env_steps"] for p in site.relay.peers(site.key, "simulator")) < steps:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.01)
            site.crash()

        thread = threading.Thread(target=watch)
        thread.start()
        return thread

    def train(site: CrashableRelay, crashes: bool) -> tuple[list, dict, float]:
        assert init_trainer(site.relay, site.key, num_workers=2, num_env_runners=2, connect_timeout=5)
        config = (
            PPOConfig()
            .environment("CartPole-v1")
            .env_runners(num_env_runners=2, num_envs_per_env_runner=2)
            .training(train_batch_size_per_learner=256, minibatch_size=64, num_epochs=1)
            .debugging(seed=11)
        )
        algo = config.build_algo()
        try:
            results = []
            for iteration in range(2):
                watcher = crash_while_sampling(site, 100) if crashes and iteration == 0 else None
                if crashes and iteration == 1:
                    site.crash()
                result = algo.train()
                if watcher is not None:
                    watcher.join(60)
                runners = result["env_runners"]
                results.append((runners[NUM_ENV_STEPS_SAMPLED_LIFETIME], runners.get("episode_return_mean")))
            return results, algo.get_module().state_dict(), result["env_runners"]["remoterl"]["resumes"]
        finally:
            algo.stop()
            remoterl_ray.shutdown()

    with CrashableRelay("resume-rllib", simulators=2) as site:
        expected, weights, resumes = train(site, crashes=False)
        assert resumes == 0
        got, crashed_weights, crashed_resumes = train(site, crashes=True)
        assert len(site.relays) == 3 and crashed_resumes > 0
        assert got == expected
        assert all(torch.equal(weights[name], crashed_weights[name]) for name in weights)

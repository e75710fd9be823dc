"""RLlib on remote simulators takes the paths it takes with local envs.

Each test runs the same config on RLlib's own ``SingleAgentEnvRunner`` (envs
in this process) and on ``RemoteEnvRunner`` (envs on a real simulator behind
a real relay), and compares: an env that raises RLlib's
``StepFailedRecreateEnvError`` is recreated silently; an env that rejects an
action takes RLlib's error path with the env's own error; a creator that
returns a vector env works in ``gym_env_vectorize_mode="vector_entry_point"``
and fails alike in ``"sync"``; creators and ``gym.register`` entry points that
are module-level classes or functions travel by name. Env runners are built
in this process, as in RLlib's own env runner tests: no Ray cluster needed.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import gymnasium as gym
import numpy as np
import pytest
from conftest import SimulatorPool, init_trainer
from error_envs import BoundedActionEnv, ConfiguredCounterEnv, RecreateOnceEnv, StepCounterEnv, make_vector_env
from ray import tune
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.env.env_errors import StepFailedRecreateEnvError
from ray.rllib.env.env_runner import ENV_STEP_FAILURE
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.tune.registry import ENV_CREATOR, _global_registry

import remoterl_ray
from remoterl_ray.api import trainer_settings
from remoterl_ray.protocol.errors import RemoteEnvError, UnsupportedError, error_from_wire
from remoterl_ray.rllib import EnvCreator, RemoteEnvRunner, use_remote_env_runners
from remoterl_ray.rllib.creators import creator_target
from remoterl_ray.trainer.remote_vector_env import RemoteVectorEnv

ALLOW = ("error_envs", "error_envs:make_vector_env")


@pytest.fixture(scope="module", params=[1, 2], ids=["one", "two"])
def sims(request, relay, keys) -> Iterator[str]:
    """A workspace whose envs one simulator hosts, or two split."""
    pool = SimulatorPool(relay, keys.take())
    pool.start(request.param, allow=ALLOW)
    yield pool.key
    pool.stop()


class EnvCreations(RLlibCallback):
    """Counts ``make_env`` calls (RLlib's recreations included) per env runner."""

    counts: Counter = Counter()

    def on_environment_created(self, *, env_runner, **kwargs) -> None:
        EnvCreations.counts[id(env_runner)] += 1


@contextmanager
def env_runner_errors() -> Iterator[list[logging.LogRecord]]:
    """What RLlib's env runner logs at ERROR (it logs each env failure it does not expect)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("ray.rllib")  # the logger RLlib's env_runner.py writes to
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def make_runner(config: AlgorithmConfig, relay, key: str, *, remote: bool) -> SingleAgentEnvRunner:
    """RLlib's own env runner for ``config``, or a remote one on ``key``'s simulators."""
    if not remote:
        return SingleAgentEnvRunner(config=config)
    settings = trainer_settings(key, relay.url, num_workers=1, timeout=30.0)
    return RemoteEnvRunner(config=use_remote_env_runners(config, settings))


def runners(config: AlgorithmConfig, relay, key: str) -> Iterator[SingleAgentEnvRunner]:
    """The same config on a local env runner, then on a remote one."""
    for remote in (False, True):
        yield make_runner(config, relay, key, remote=remote)


def test_step_failed_recreate_env_error_is_registered_by_the_integration():
    exc = error_from_wire({"code": "env_error", "message": "lost it",
                           "remote_type": "ray.rllib.env.env_errors.StepFailedRecreateEnvError"})
    assert isinstance(exc, StepFailedRecreateEnvError) and isinstance(exc, RemoteEnvError)


def test_an_env_asking_to_be_recreated_is_recreated_silently_as_locally(relay, sims):
    tune.register_env("FidelityRecreateOnce", RecreateOnceEnv)
    for remote in (False, True):
        config = (
            PPOConfig()
            .environment("FidelityRecreateOnce", env_config={"tag": uuid.uuid4().hex, "fail_at": 4})
            .env_runners(num_envs_per_env_runner=1)
            .fault_tolerance(restart_failed_sub_environments=True)
            .callbacks(EnvCreations)
        )
        runner = make_runner(config, relay, sims, remote=remote)
        try:
            assert isinstance(runner.env.unwrapped, RemoteVectorEnv) == remote
            with env_runner_errors() as errors:
                episodes = runner.sample(num_timesteps=20, random_actions=True)
            assert EnvCreations.counts[id(runner)] == 2, "made, then recreated once"
            assert errors == [], "a StepFailedRecreateEnvError is not logged as an error"
            assert sum(len(e) for e in episodes) >= 20
        finally:
            runner.stop()


def test_an_action_the_env_rejects_takes_rllibs_local_error_path(relay, sims):
    """The env judges its actions: RLlib sees the env's own error, logs it and
    recreates the env (or, without restarts, raises with it as the cause)."""
    tune.register_env("FidelityBounded", BoundedActionEnv)
    config = (
        PPOConfig()
        .environment("FidelityBounded")
        .env_runners(num_envs_per_env_runner=1)
        .fault_tolerance(restart_failed_sub_environments=True)
        .callbacks(EnvCreations)
    )
    bad = np.array([[3.0]], np.float32)  # outside the Box(-1, 1): what an exploring policy may send
    for runner in runners(config, relay, sims):
        try:
            runner.sample(num_timesteps=4, random_actions=True)
            with env_runner_errors() as errors:
                assert runner._try_env_step(bad) is ENV_STEP_FAILURE
            assert EnvCreations.counts[id(runner)] == 2, "recreated"
            assert len(errors) == 1 and "BoundedActionEnv rejects action" in errors[0].getMessage()
            assert sum(len(e) for e in runner.sample(num_timesteps=4, random_actions=True)) >= 4
        finally:
            runner.stop()
    strict = config.copy(copy_frozen=False).fault_tolerance(restart_failed_sub_environments=False)
    for runner in runners(strict, relay, sims):
        try:
            runner.sample(num_timesteps=2, random_actions=True)
            with pytest.raises(RuntimeError) as raised:
                runner._try_env_step(bad)
            cause = raised.value.__cause__
            assert isinstance(cause, ValueError) and "BoundedActionEnv rejects action" in str(cause)
        finally:
            runner.stop()


def test_a_creator_returning_a_vector_env_runs_as_locally(relay, sims):
    tune.register_env("FidelityVectorCounter", make_vector_env)  # Ray's own register_env: a module-level function
    config = (
        PPOConfig()
        .environment("FidelityVectorCounter", env_config={"start": 5})
        .env_runners(num_envs_per_env_runner=3, gym_env_vectorize_mode="vector_entry_point", rollout_fragment_length=8)
    )
    local, remote = make_runner(config, relay, sims, remote=False), make_runner(config, relay, sims, remote=True)
    try:
        assert isinstance(remote.env.unwrapped, RemoteVectorEnv) and remote.num_envs == local.num_envs == 3
        assert remote.env.single_observation_space == local.env.single_observation_space
        expected, got = local.env.reset(seed=0)[0], remote.env.reset(seed=0)[0]
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(got, [[5], [5], [5]])
        for step in range(12):  # past the end of an 8-step episode: NEXT_STEP autoresets alike
            actions = np.array([step % 2, 1, 0])
            for e, g in zip(local.env.step(actions)[:4], remote.env.step(actions)[:4]):
                np.testing.assert_array_equal(g, e)
        episodes = remote.sample(num_timesteps=24, random_actions=True)
        assert sum(len(e) for e in episodes) >= 24
    finally:
        local.stop()
        remote.stop()


def test_a_creator_returning_a_vector_env_fails_alike_in_sync_mode(relay, sims):
    tune.register_env("FidelityVectorCounter", make_vector_env)
    config = PPOConfig().environment("FidelityVectorCounter").env_runners(num_envs_per_env_runner=2)
    settings = trainer_settings(sims, relay.url, num_workers=1, timeout=30.0)
    with pytest.raises(TypeError, match="must inherit from the gymnasium.Env class"):
        SingleAgentEnvRunner(config=config)
    with pytest.raises(TypeError, match="must inherit from the gymnasium.Env class") as raised:
        RemoteEnvRunner(config=use_remote_env_runners(config, settings))
    assert isinstance(raised.value, RemoteEnvError)


def test_module_level_creators_travel_by_name():
    assert creator_target(make_vector_env, "x") == "error_envs:make_vector_env"
    assert creator_target(RecreateOnceEnv, "x") == "error_envs:RecreateOnceEnv"

    def nested(config):
        return StepCounterEnv()

    with pytest.raises(UnsupportedError, match="my_pkg.envs:make_env"):
        creator_target(nested, "x")


def test_register_env_after_init_stores_a_module_level_function_by_name(relay, sims):
    assert init_trainer(relay, sims, num_workers=1)
    try:
        tune.register_env("FidelityByName", make_vector_env)
        assert _global_registry.get(ENV_CREATOR, "FidelityByName") == EnvCreator("error_envs:make_vector_env")
        with pytest.raises(UnsupportedError):
            tune.register_env("FidelityNested", lambda config: StepCounterEnv())
    finally:
        remoterl_ray.shutdown()


def test_an_id_the_driver_registers_with_a_class_is_made_remotely(relay, sims):
    """``gym.register(id, entry_point=Class)`` in the driver: the env runner in the
    driver's process makes the id on the simulators, mirrored as "module:Class"."""
    assert init_trainer(relay, sims, num_workers=1)
    try:
        gym.register("FidelityCounter-v0", entry_point=StepCounterEnv)
        config = PPOConfig().environment("FidelityCounter-v0", env_config={"start": 2})
        runner = RemoteEnvRunner(config=use_remote_env_runners(config.env_runners(num_envs_per_env_runner=2)))
        try:
            assert isinstance(runner.env.unwrapped, RemoteVectorEnv)
            np.testing.assert_array_equal(runner.env.reset(seed=0)[0], [[2], [2]])
            assert sum(len(e) for e in runner.sample(num_timesteps=8, random_actions=True)) >= 8
        finally:
            runner.stop()
    finally:
        gym.registry.pop("FidelityCounter-v0", None)
        remoterl_ray.shutdown()


def test_the_env_runners_vector_env_answers_get_attr_and_call_as_locally(relay, sims):
    """``env_runner.env.unwrapped`` is a vector env whose ``get_attr``/``call`` reach the envs."""
    tune.register_env("FidelityCounter", ConfiguredCounterEnv)
    config = PPOConfig().environment("FidelityCounter", env_config={"start": 3}).env_runners(num_envs_per_env_runner=2)
    local, remote = make_runner(config, relay, sims, remote=False), make_runner(config, relay, sims, remote=True)
    try:
        for runner in (local, remote):
            runner.env.reset(seed=0)
            runner.env.step(np.array([1, 0]))
        assert remote.env.unwrapped.get_attr("t") == local.env.unwrapped.get_attr("t") == (4, 4)
        assert remote.env.unwrapped.get_attr("start") == local.env.unwrapped.get_attr("start")
        remote.env.unwrapped.set_attr("start", [7, 8])
        assert remote.env.unwrapped.get_attr("start") == (7, 8)
    finally:
        local.stop()
        remote.stop()


class SeenEnvContexts(RLlibCallback):
    """What ``on_environment_created`` receives, per env runner (by its remote-ness)."""

    seen: list[tuple[str, dict, int, int]] = []

    def on_environment_created(self, *, env_runner, env, env_context, **kwargs) -> None:
        SeenEnvContexts.seen.append(
            (type(env).__name__, dict(env_context), env_context.worker_index, env_context.num_workers)
        )


def test_make_env_is_rllibs_own_with_only_the_vector_env_remote(relay, sims):
    """Callbacks see the env context they see locally (no relay settings in it), and
    changing ``config.env_config`` then calling ``make_env()`` remakes the env, as
    RLlib's ``make_env`` docstring promises."""
    tune.register_env("FidelityConfiguredCounter", ConfiguredCounterEnv)
    config = (
        PPOConfig()
        .environment("FidelityConfiguredCounter", env_config={"start": 3})
        .env_runners(num_envs_per_env_runner=2)
        .callbacks(SeenEnvContexts)
    )
    SeenEnvContexts.seen.clear()
    built = []
    try:
        for runner in runners(config, relay, sims):
            built.append(runner)
            np.testing.assert_array_equal(runner.env.reset(seed=0)[0], [[3], [3]])
            runner.config = runner.config.copy(copy_frozen=False)
            runner.config.env_config = {"start": 7}
            runner.make_env()
            np.testing.assert_array_equal(runner.env.reset(seed=0)[0], [[7], [7]])
        local, remote = SeenEnvContexts.seen[:2], SeenEnvContexts.seen[2:]
        assert [name for name, *_ in local] == ["SyncVectorEnv"] * 2
        assert [name for name, *_ in remote] == ["RemoteVectorEnv"] * 2
        assert [rest for _, *rest in remote] == [rest for _, *rest in local]
        assert local[0][1] == {"start": 3} and local[1][1] == {"start": 7}
    finally:
        for runner in built:
            runner.stop()

"""Peers that go away, keys that are wrong, relays that restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import gymnasium as gym
import numpy as np
import pytest
from conftest import TEST_ENVS_MODULE, SimulatorPool, in_thread, init_trainer, new_key, sim_env

import remoterl_ray
from remoterl_ray import (
    AuthenticationError,
    EnvsMadeAgainError,
    NoSimulatorError,
    RelayUnavailableError,
    SimulatorLostError,
)
from remoterl_ray.local import free_port, start_relay, start_simulator
from remoterl_ray.trainer.remote_env import RECONNECTED


def test_wrong_key_raises_runtime_error(relay, trainer_cleanup):
    with pytest.raises(AuthenticationError) as info:
        init_trainer(relay, "not-a-key")
    assert isinstance(info.value, RuntimeError)
    assert "rejected" in str(info.value)
    with pytest.raises(AuthenticationError, match="required"):
        remoterl_ray.init(None, role="trainer", relay_url=relay.url, connect_timeout=5)
    assert not remoterl_ray.is_initialized()


def test_unreachable_relay_returns_false_and_nothing_runs_locally_unnoticed(trainer_cleanup):
    """A script that ignores init's False must not train on local envs believing they are
    remote: building envs raises the reason, until shutdown() makes local the choice."""
    url = f"ws://127.0.0.1:{free_port()}"
    make_before = gym.make
    assert remoterl_ray.init("k", role="trainer", relay_url=url, connect_timeout=1.0) is False
    assert not remoterl_ray.is_initialized()
    for build in (lambda: gym.make("CartPole-v1"), lambda: gym.make_vec("CartPole-v1", 2)):
        with pytest.raises(RelayUnavailableError, match="returned False .*unreachable.*LOCAL.*shutdown"):
            build()
    from stable_baselines3.common.env_util import make_vec_env  # its factories call gym.make

    with pytest.raises(RelayUnavailableError, match="LOCAL"):
        make_vec_env("CartPole-v1", n_envs=2)
    from ray import tune
    from ray.rllib.algorithms.ppo import PPOConfig

    config = PPOConfig().environment("CartPole-v1")
    with pytest.raises(RelayUnavailableError, match="LOCAL"):
        config.build_algo()  # refused before RLlib starts Ray or any env runner
    with pytest.raises(RelayUnavailableError, match="LOCAL"):
        tune.Tuner("PPO", param_space=config)
    remoterl_ray.shutdown()  # local envs, on purpose
    assert gym.make is make_before
    gym.make("CartPole-v1").close()
    make_vec_env("CartPole-v1", n_envs=2).close()


def test_http_relay_urls_mean_websocket_ones(relay, keys, trainer_cleanup):
    """The dashboard's address reads http://; given to a simulator or a trainer it means ws://."""
    key = keys.take()
    web_url = relay.url.replace("ws://", "http://", 1)
    sim = start_simulator(web_url, key, env=sim_env())
    try:
        assert remoterl_ray.init(key, role="trainer", relay_url=web_url, simulator_wait=30) is True
        assert remoterl_ray.current_session().settings.relay_url == relay.url
        env = gym.make("CartPole-v1")
        assert env.reset(seed=0)[0].shape == (4,)
        env.close()
    finally:
        remoterl_ray.shutdown()
        sim.stop()


def test_a_simulator_waiting_for_an_unreachable_relay_says_so_with_each_retry():
    sim = start_simulator(f"ws://127.0.0.1:{free_port()}", "any-key", env=sim_env())
    try:
        deadline = time.monotonic() + 30
        while sim.output().count("retrying in") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        out = sim.output()
        assert out.count("retrying in") >= 2, out[-2000:]
        assert "not reachable (attempt 2" in out and "Traceback" not in out
    finally:
        sim.stop()


def test_a_relay_whose_port_is_taken_says_so_in_one_line_and_announces_nothing(tmp_path):
    import socket

    taken = socket.create_server(("127.0.0.1", 0))
    try:
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "remoterl_ray", "relay", "--open", "--port", str(port)],
            capture_output=True, text=True, timeout=60, env={**os.environ, "REMOTERL_DB": str(tmp_path / "r.db")},
        )  # fmt: skip
    finally:
        taken.close()
    assert out.returncode == 2
    assert "cannot listen on" in out.stderr and "in use" in out.stderr and "Traceback" not in out.stderr
    assert "remoterl relay on" not in out.stdout  # the URL is printed once the socket is bound, never before


def test_not_strict_leaves_local_envs_alone(trainer_cleanup):
    url = f"ws://127.0.0.1:{free_port()}"
    make_before = gym.make
    assert remoterl_ray.init("k", role="trainer", relay_url=url, connect_timeout=1.0, strict=False) is False
    assert gym.make is make_before  # nothing patched


def test_no_simulator_online_returns_false_and_refuses_local_envs(relay, keys, trainer_cleanup):
    assert init_trainer(relay, keys.take(), simulator_wait=0.5) is False
    assert not remoterl_ray.is_initialized()
    with pytest.raises(NoSimulatorError, match="no simulator .* came online"):
        gym.make("CartPole-v1")
    assert init_trainer(relay, keys.take(), simulator_wait=0.5) is False  # a new init starts over
    with pytest.raises(NoSimulatorError):
        gym.make_vec("CartPole-v1", 2)


def test_simulator_with_wrong_key_exits_with_a_clear_error(relay):
    proc = start_simulator(relay.url, "wrong-key", env=sim_env())
    proc.popen.wait(30)
    assert proc.popen.returncode == 2
    assert "auth_failed" in proc.output() and "rejected" in proc.output()


def test_simulator_killed_mid_episode_gives_a_coded_error(relay, keys, trainer_cleanup):
    key = keys.take()
    pool = SimulatorPool(relay, key)
    (sim,) = pool.start(1)
    try:
        assert init_trainer(relay, key, timeout=60, resume_window=1)
        gym.register("SlowCounter-v0", entry_point=f"{TEST_ENVS_MODULE}:CounterEnv", kwargs={"delay": 3.0})
        env = gym.make("SlowCounter-v0")
        vec = gym.make_vec("CartPole-v1", num_envs=2)
        env.reset(seed=0)
        vec.reset(seed=0)
        thread, outcome = in_thread(lambda: env.step(1))
        time.sleep(0.5)  # the step is now running on the simulator
        sim.kill()
        thread.join(30)
        assert not thread.is_alive()
        # The relay saw the socket close and told us; the simulator did not resume its channels
        # within the window (a crash looks like a dropped connection): a coded error, not the 60 s timeout.
        assert isinstance(outcome.get("error"), SimulatorLostError), outcome
        assert outcome["error"].code.value == "resume_expired"
        with pytest.raises(SimulatorLostError):
            vec.step(np.array([0, 1]))
        with pytest.raises(SimulatorLostError):
            env.reset()
        env.close()
        vec.close()
        # With its only simulator gone the workspace cannot host new envs: a coded error, no hang.
        with pytest.raises(NoSimulatorError):
            gym.make("CartPole-v1")
    finally:
        gym.registry.pop("SlowCounter-v0", None)
        pool.stop()


def test_relay_restart_without_resuming_makes_the_envs_again(keys, trainer_cleanup):
    """With resuming off (``resume_window=0``, also what a window run out leads to): while
    the relay is down a step fails with a coded error; once it is back, the same env
    objects are made again and report the lost episodes truncated."""
    key = new_key("restart")
    port = free_port()
    relay = start_relay(api_keys=[key], port=port)
    pool = SimulatorPool(relay, key)
    (sim,) = pool.start(1)
    try:
        assert init_trainer(relay, key, connect_timeout=2, simulator_wait=20, resume_window=0)
        env = gym.make("CartPole-v1")
        vec = gym.make_vec("CartPole-v1", 3, vectorization_mode="sync")
        pooled = gym.make_vec("CartPole-v1", 2, vectorization_mode="sync")  # stepped with send / recv
        masked = gym.make_vec("CartPole-v1", 3, vectorization_mode="sync")  # its first call after: a masked reset
        env.reset(seed=0)
        vec.reset(seed=0)
        pooled.reset(seed=0)
        masked.reset(seed=0)
        state = masked.np_random.bit_generator.state
        with pytest.raises(AssertionError):  # checked before anything changes, as SyncVectorEnv does
            masked.reset(seed=5, options={"reset_mask": np.array([1, 0, 0])})
        assert masked.np_random.bit_generator.state == state
        relay.stop()
        with pytest.raises(RelayUnavailableError):
            env.step(0)
        relay = start_relay(api_keys=[key], port=port)
        pool.relay = relay
        relay.wait_for(key, "simulator", 1, timeout=30)  # the same simulator process came back
        assert sim.alive()

        with pytest.raises(EnvsMadeAgainError):  # not an episode call: it would reach new envs, so it says so
            env.get_wrapper_attr("gravity")
        obs, reward, terminated, truncated, info = env.step(1)
        assert (reward, terminated, truncated) == (0.0, False, True) and info[RECONNECTED] is True
        assert env.observation_space.contains(obs)
        env.reset(seed=1)
        local = gym.make("CartPole-v1")
        local.reset(seed=1)
        assert np.array_equal(env.step(1)[0], local.step(1)[0])

        obs, rewards, terminations, truncations, infos = vec.step(np.array([1, 0, 1]))
        assert truncations.all() and not terminations.any() and infos[RECONNECTED].all()
        # NEXT_STEP autoreset: the next step starts the new episodes and ignores the actions.
        again, rewards, terminations, truncations, _ = vec.step(np.array([0, 0, 0]))
        assert np.array_equal(again, obs) and not rewards.any() and not (terminations | truncations).any()
        assert vec.step(np.array([0, 1, 0]))[0].shape == (3, 4)

        pooled.send(np.array([1, 0]))
        _, _, terminations, truncations, infos = pooled.recv()
        assert truncations.all() and not terminations.any() and infos[RECONNECTED].all()
        assert list(infos["env_id"]) == [0, 1]
        for _ in range(2):  # the autoreset step, then an ordinary one
            pooled.send(np.array([0, 1]))
            assert pooled.recv()[0].shape == (2, 4)

        # Every env was made again: a masked reset resets them all, and says which lost their episodes.
        obs, infos = masked.reset(options={"reset_mask": np.array([True, False, False])})
        assert obs.shape == (3, 4) and list(infos["_" + RECONNECTED]) == [False, True, True]
        _, _, terminations, truncations, infos = masked.step(np.array([0, 1, 0]))
        assert not (terminations | truncations).any() and RECONNECTED not in infos
        env.close()
        vec.close()
        pooled.close()
        masked.close()
    finally:
        remoterl_ray.shutdown()
        pool.stop()
        relay.stop()


def test_simulator_init_blocks_until_sigterm_then_returns(relay, keys):
    key = keys.take()
    script = textwrap.dedent(
        f"""
        import remoterl
        ok = remoterl.init({key!r}, role="simulator", relay_url={relay.url!r})
        print("init returned", ok, flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        relay.wait_for(key, "simulator", 1, timeout=30)
        assert proc.poll() is None  # still blocking in init
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert b"init returned True" in out
        relay.wait_for(key, "simulator", 0, timeout=10)
    finally:
        proc.kill()


def test_frozen_simulator_is_detected_by_heartbeats(keys, trainer_cleanup):
    """A simulator that stops answering (SIGSTOP: no FIN, no RST) is declared gone."""
    key = new_key("frozen")
    relay = start_relay(api_keys=[key], extra_args=["--ping-interval", "0.5", "--ping-timeout", "1"])
    pool = SimulatorPool(relay, key)
    (sim,) = pool.start(1)
    try:
        assert init_trainer(relay, key, timeout=60, resume_window=1)
        env = gym.make("CartPole-v1")
        env.reset(seed=0)
        os.kill(sim.pid, signal.SIGSTOP)
        with pytest.raises(SimulatorLostError):
            env.step(0)  # answered by the relay's heartbeat verdict, well before the 60 s timeout
        relay.wait_for(key, "simulator", 0, timeout=10)
    finally:
        os.kill(sim.pid, signal.SIGCONT)
        remoterl_ray.shutdown()
        pool.stop()
        relay.stop()


def test_heartbeats_are_answered_during_a_long_env_step_and_a_long_pause(keys, trainer_cleanup):
    """Both peers read their socket only while they wait for it: a simulator busy in
    a 3 s env step and a trainer pausing 3 s (a gradient update) must still answer
    a relay that pings every 0.5 s and drops a peer whose pong is 1 s late."""
    key = new_key("busy")
    relay = start_relay(api_keys=[key], extra_args=["--ping-interval", "0.5", "--ping-timeout", "1"])
    pool = SimulatorPool(relay, key)
    pool.start(1)
    try:
        assert init_trainer(relay, key, timeout=60)
        env = gym.make("remoterl_testenvs:Counter-v0", delay=3.0)
        env.reset(seed=0)
        peers = {role: relay.wait_for(key, role, 1) for role in ("simulator", "trainer")}
        _, _, _, _, info = env.step(1)  # the simulator's step sleeps 3 s
        time.sleep(3.0)  # and nobody reads on the trainer
        _, _, _, _, later = env.step(1)
        assert later["count"] == info["count"] + 1 and RECONNECTED not in later
        for role, before in peers.items():  # the same connections, never dropped and dialled again
            assert [p["id"] for p in relay.wait_for(key, role, 1)] == [p["id"] for p in before]
    finally:
        remoterl_ray.shutdown()
        pool.stop()
        relay.stop()


def test_allowlist_from_environment_variable(relay, keys, trainer_cleanup):
    key = keys.take()
    pool = SimulatorPool(relay, key)
    pool.start(1, allow=(), env={"REMOTERL_ALLOW_MODULES": f"json, {TEST_ENVS_MODULE}"})
    try:
        assert init_trainer(relay, key)
        gym.register("EnvAllowed-v0", entry_point=f"{TEST_ENVS_MODULE}:CounterEnv")
        env = gym.make("EnvAllowed-v0")
        assert env.reset(seed=1)[0].shape == (2,)
        env.close()
    finally:
        gym.registry.pop("EnvAllowed-v0", None)
        remoterl_ray.shutdown()
        pool.stop()


def test_a_move_request_after_shutdown_does_not_dial_again():
    """The relay's reconnect request can arrive (in the reading thread) after the session
    was shut down: the session stays shut down."""
    from remoterl_ray.protocol.messages import Reconnect
    from remoterl_ray.trainer.links import Home, RelayLinks
    from remoterl_ray.trainer.settings import TrainerSettings

    links = RelayLinks(TrainerSettings(relay_url=f"ws://127.0.0.1:{free_port()}", api_key=None, connect_timeout=0.1))
    links.close()
    links._on_control(Reconnect())
    assert links.state is Home.CLOSED
    with pytest.raises(RelayUnavailableError, match="shut down"):
        links.conn

"""Resuming with real processes: a relay killed and restarted, connections cut on
either side in the middle of a step, a window that runs out. Each run is compared,
value for value, with the same envs stepped locally without any interruption."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import gymnasium as gym
import numpy as np
import pytest
from conftest import TEST_ENVS_ALLOW, CrashableRelay, SimulatorPool, in_thread, init_trainer, local_gym, sim_env
from latency_proxy import LatencyProxy

import remoterl_ray
from remoterl_ray.local import start_simulator
from remoterl_ray.trainer.remote_env import RECONNECTED

GATED = "remoterl_testenvs:GatedCounter-v0"


def equal_steps(remote: tuple, local: tuple) -> None:
    """A step (or reset) result, value for value and type for type."""
    assert len(remote) == len(local)
    for got, want in zip(remote, local):
        if isinstance(want, dict):
            assert got.keys() == want.keys()
            for key in want:
                np.testing.assert_array_equal(got[key], want[key])
        else:
            assert type(got) is type(want)
            np.testing.assert_array_equal(got, want)


def received(result: tuple) -> tuple:
    """``recv``'s result without the ``env_id`` it adds (every env answered, in order here)."""
    *values, infos = result
    assert list(infos.pop("env_id")) == list(range(len(values[0])))
    return (*values, infos)


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true within {timeout}s: {what}")
        time.sleep(0.02)


def test_a_relay_killed_and_restarted_mid_run_costs_no_step_and_no_episode():
    """SIGKILL the relay between two steps and again with a step in flight: envs on two
    simulators, a single env and a vector env stepped with send/recv carry on exactly
    as local ones that were never interrupted."""
    with CrashableRelay("resume-restart", simulators=2) as site:
        with local_gym():
            local_env = gym.make("CartPole-v1")
            local_vec = gym.make_vec("CartPole-v1", 4, vectorization_mode="sync")
            local_pooled = gym.make_vec("CartPole-v1", 2, vectorization_mode="sync")
        assert init_trainer(site.relay, site.key, num_env_runners=2, connect_timeout=5)
        env = gym.make("CartPole-v1")
        vec = gym.make_vec("CartPole-v1", 4, vectorization_mode="sync")
        pooled = gym.make_vec("CartPole-v1", 2, vectorization_mode="sync")
        assert vec.unwrapped.shard_sizes == [2, 2]
        equal_steps(env.reset(seed=1), local_env.reset(seed=1))
        equal_steps(vec.reset(seed=2), local_vec.reset(seed=2))
        equal_steps(pooled.reset(seed=3), local_pooled.reset(seed=3))
        rng = np.random.default_rng(0)
        for t in range(120):
            if t == 40:  # between steps
                site.crash()
            action, actions = int(rng.integers(2)), rng.integers(0, 2, 4)
            if t == 80:  # with a step in flight on every env
                vec.step_async(actions)
                pooled.send(actions[:2])
                site.crash()
                equal_steps(vec.step_wait(), local_vec.step(actions))
                equal_steps(received(pooled.recv()), local_pooled.step(actions[:2]))
            else:
                equal_steps(vec.step(actions), local_vec.step(actions))
                pooled.send(actions[:2])
                equal_steps(received(pooled.recv()), local_pooled.step(actions[:2]))
            result = env.step(action)
            equal_steps(result, local_env.step(action))
            assert RECONNECTED not in result[-1]
            if result[2] or result[3]:
                equal_steps(env.reset(), local_env.reset())
        session = remoterl_ray.current_session()
        assert session.metrics_snapshot()["resumes"] == 6  # three envs, twice
        # The relay restarted empty: it counts the resumes it made, of four channels.
        assert sum(p["resumes"] for p in site.relay.peers(site.key, "simulator")) == 4
        for e in (env, vec, pooled):
            e.close()


@pytest.fixture
def gate(tmp_path) -> Iterator[Path]:
    path = tmp_path / "gate"
    yield path
    path.unlink(missing_ok=True)


@pytest.mark.parametrize("side", ["trainer", "simulator"])
def test_a_connection_cut_during_a_step_gets_the_one_answer_the_simulator_gave(relay, keys, gate, side,
                                                                                trainer_cleanup):  # fmt: skip
    """The step reached the simulator, which is still running it when one side's connection
    is cut: after the resume the step returns its answer, and the env stepped once."""
    key = keys.take()
    address = urlsplit(relay.url)
    with LatencyProxy(address.hostname, address.port, 0.0) as proxy:
        through = f"ws://127.0.0.1:{proxy.port}"
        sim = start_simulator(through if side == "simulator" else relay.url, key, allow=TEST_ENVS_ALLOW,
                              env={**sim_env(), "REMOTERL_TEST_GATE": str(gate)})  # fmt: skip
        try:
            relay.wait_for(key, "simulator", 1)
            assert remoterl_ray.init(key, role="trainer", relay_url=through if side == "trainer" else relay.url,
                                     timeout=30, connect_timeout=10)  # fmt: skip
            with local_gym():
                local = gym.make_vec(GATED, 2, vectorization_mode="sync")
            vec = gym.make_vec(GATED, 2, vectorization_mode="sync")
            equal_steps(vec.reset(seed=0), local.reset(seed=0))
            forwarded = relay.peers(key, "simulator")[0]["frames_out"]
            gate.touch()
            actions = np.array([1, 2])
            vec.step_async(actions)
            wait_until(lambda: relay.peers(key, "simulator")[0]["frames_out"] > forwarded, 10, "step forwarded")
            time.sleep(0.2)  # the simulator reads it and blocks in the gated step
            assert proxy.drop() == 1
            gate.unlink()  # the step ends; its answer meets a cut connection
            equal_steps(vec.step_wait(), local.step(actions))  # stepped once: the counters moved by 1 and 2
            for t in range(5):
                equal_steps(vec.step(np.array([t % 3, 1])), local.step(np.array([t % 3, 1])))
            assert remoterl_ray.current_session().metrics_snapshot()["resumes"] == 1
            vec.close()
        finally:
            remoterl_ray.shutdown()
            sim.stop()


def test_a_window_that_runs_out_ends_the_episodes_instead_of_hanging():
    """The relay restarts, but the simulator of env ``a`` is gone for good while ``b``'s came
    back: ``b`` resumes (taking channel ids on the new relay), ``a`` cannot, so after the
    window ``a`` is made again and reports its episode truncated, and no step of ``a`` ever
    lands on ``b`` (whose channel on the new relay may carry ``a``'s old id)."""
    with CrashableRelay("resume-expired", simulators=0) as site:
        (first,) = site.pool.start(1)
        site.pool.start(1)
        assert init_trainer(site.relay, site.key, connect_timeout=5, simulator_wait=20, resume_window=2)
        with local_gym():
            local_b = gym.make(GATED)
        a, b = gym.make(GATED), gym.make(GATED)  # the least loaded simulator first: a on the first one
        assert [p["hosted_envs"] for p in site.relay.peers(site.key, "simulator")] == [1, 1]
        a.reset(seed=1)
        equal_steps(b.reset(seed=2), local_b.reset(seed=2))
        first.kill()
        site.crash()
        equal_steps(b.step(2), local_b.step(2))  # b resumes on the new relay
        started = time.monotonic()
        obs, reward, terminated, truncated, info = a.step(1)
        assert truncated and not terminated and reward == 0.0 and info[RECONNECTED]
        assert 2 <= time.monotonic() - started < 30
        equal_steps(b.step(1), local_b.step(1))  # b's env moved by b's actions only
        a.close()
        b.close()


def test_a_step_sent_before_a_crash_is_resumed_by_whichever_call_comes_next():
    """``send``, the relay crashes, an attribute call resumes the channels: the step still
    out is sent again with it (before it), and ``recv`` gets the step's one answer."""
    with CrashableRelay("resume-two-calls", simulators=1) as site:
        with local_gym():
            local = gym.make_vec(GATED, 2, vectorization_mode="sync")
        assert init_trainer(site.relay, site.key, connect_timeout=5)
        vec = gym.make_vec(GATED, 2, vectorization_mode="sync")
        equal_steps(vec.reset(seed=4), local.reset(seed=4))
        vec.send(np.array([2, 1]))
        site.crash()
        assert list(vec.get_attr("delay")) == [0.0, 0.0]  # answered after the step, on the resumed channel
        equal_steps(received(vec.recv()), local.step(np.array([2, 1])))
        equal_steps(vec.step(np.array([1, 1])), local.step(np.array([1, 1])))
        assert remoterl_ray.current_session().metrics_snapshot()["resumes"] == 1
        vec.close()


def test_a_simulator_frees_the_envs_of_a_trainer_that_never_comes_back(relay, keys):
    """A trainer process killed outright: its simulator keeps the envs for its window,
    then closes them, and its room is free for the next trainer."""
    key = keys.take()
    pool = SimulatorPool(relay, key)
    pool.start(1, extra_args=("--max-envs", "2", "--resume-window", "1"))
    script = (
        "import sys, gymnasium as gym, remoterl_ray\n"
        f"assert remoterl_ray.init({key!r}, relay_url={relay.url!r})\n"
        "env = gym.make_vec('CartPole-v1', 2, vectorization_mode='sync')\n"
        "env.reset(seed=0)\n"
        "print('made', flush=True)\n"
        "sys.stdin.read()\n"
    )
    trainer = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert trainer.stdout.readline().strip() == b"made"
        trainer.kill()  # no goodbye: its channel pauses, the simulator keeps the envs
        trainer.wait(10)
        wait_until(lambda: "did not resume within 1s" in pool.procs[0].output(), 30, "the window ran out")
        assert remoterl_ray.init(key, role="trainer", relay_url=relay.url, simulator_wait=10)
        vec = gym.make_vec("CartPole-v1", 2, vectorization_mode="sync")  # the room is free again
        assert vec.reset(seed=0)[0].shape == (2, 4)
        vec.close()
    finally:
        trainer.kill()
        remoterl_ray.shutdown()
        pool.stop()


def test_sb3_ppo_through_a_relay_crash_learns_exactly_what_it_learns_without_one():
    """PPO trains on remote envs twice with the same seeds; in the second run the relay is
    SIGKILLed part way and restarted. Same episodes, same step count, same weights."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    class CrashRelay(BaseCallback):
        """At one step, kill the relay outright; start it again from another thread while
        PPO carries on stepping (its next steps wait for the resume)."""

        def __init__(self, site: CrashableRelay | None, at: int) -> None:
            super().__init__()
            self.site, self.at, self.restarter = site, at, None

        def _on_step(self) -> bool:
            if self.site is not None and self.num_timesteps == self.at:
                self.site.crash(restart=False)
                self.restarter, _ = in_thread(self.site.crash_restart)
            return True

    def train(site: CrashableRelay, crash: bool) -> tuple[list, int, dict, float]:
        assert init_trainer(site.relay, site.key, num_env_runners=2, connect_timeout=5)
        env = make_vec_env("CartPole-v1", n_envs=4, seed=7)
        model = PPO("MlpPolicy", env, n_steps=64, batch_size=128, n_epochs=2, seed=7, device="cpu")
        callback = CrashRelay(site if crash else None, at=300)
        model.learn(total_timesteps=2048, callback=callback)
        if callback.restarter is not None:
            callback.restarter.join(60)
        episodes = [(info["r"], info["l"]) for info in model.ep_info_buffer]
        resumes = remoterl_ray.current_session().metrics_snapshot()["resumes"]
        env.close()
        remoterl_ray.shutdown()
        return episodes, model.num_timesteps, model.policy.state_dict(), resumes

    with CrashableRelay("resume-sb3", simulators=2) as site:
        episodes, steps, weights, resumes = train(site, crash=False)
        assert resumes == 0 and steps == 2048 and len(episodes) > 20
        crashed_episodes, crashed_steps, crashed_weights, crashed_resumes = train(site, crash=True)
        assert crashed_resumes == 1 and len(site.relays) == 2
        assert (crashed_episodes, crashed_steps) == (episodes, steps)
        assert all(torch.equal(weights[name], crashed_weights[name]) for name in weights)


def test_shutdown_ends_a_resume_that_waits_for_a_relay_that_is_not_back():
    with CrashableRelay("resume-shutdown", simulators=1) as site:
        assert init_trainer(site.relay, site.key, resume_window=60)
        env = gym.make("CartPole-v1")
        env.reset(seed=0)
        site.crash(restart=False)
        stepping, outcome = in_thread(lambda: env.step(0))
        time.sleep(1.0)  # dialling a relay that is not there, with the window far from over
        assert stepping.is_alive()
        started = time.monotonic()
        remoterl_ray.shutdown()
        stepping.join(30)
        assert not stepping.is_alive() and time.monotonic() - started < 10
        assert isinstance(outcome.get("error"), remoterl_ray.RemoteRLError), outcome


def test_a_simulator_cut_off_from_its_relay_closes_suspended_envs_when_its_window_ends():
    """Its trainer cannot come back while the relay is down: past its window the simulator
    closes the envs, connection or not (and then dials the region of its choice again)."""
    with CrashableRelay("resume-sim-expiry", simulators=0) as site:
        (sim,) = site.pool.start(1, extra_args=("--resume-window", "1"))
        assert init_trainer(site.relay, site.key)
        env = gym.make("CartPole-v1")
        env.reset(seed=0)
        site.crash(restart=False)
        wait_until(lambda: "did not resume within 1s" in sim.output(), 30, "the simulator's window ran out")
        assert sim.alive()

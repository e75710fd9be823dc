"""Stable-Baselines3 on remote simulators: real relay, real simulator processes."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from conftest import init_trainer, serving
from gymnasium.wrappers import TransformObservation
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.monitor import Monitor, load_results
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecFrameStack, VecNormalize

import remoterl_ray
from remoterl_ray.sb3 import RemoteVecEnv
from remoterl_ray.sb3.patch import DeferredEnv

N = 8


@pytest.fixture
def trainer(relay, two_sims):
    assert init_trainer(relay, two_sims, num_workers=2, num_env_runners=4)
    yield remoterl_ray.current_session()
    remoterl_ray.shutdown()


def _rollout(env, steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = [env.reset()]
    for _ in range(steps):
        out.append(env.step(rng.integers(0, 2, env.num_envs)))
    return out


def test_make_vec_env_equals_local_dummy_vec_env(relay, two_sims):
    local = make_vec_env("CartPole-v1", n_envs=N, seed=3)
    expected = _rollout(local, 250)
    assert init_trainer(relay, two_sims, num_workers=2, num_env_runners=4)
    try:
        remote = make_vec_env("CartPole-v1", n_envs=N, seed=3)
        assert isinstance(remote, RemoteVecEnv)
        assert remote.venv.shard_sizes == [4, 4]
        got = _rollout(remote, 250)
        episodes = 0
        np.testing.assert_allclose(got[0], expected[0])
        for (o1, r1, d1, i1), (o2, r2, d2, i2) in zip(got[1:], expected[1:]):
            np.testing.assert_allclose(o1, o2, rtol=1e-6)
            np.testing.assert_array_equal(r1, r2)
            assert r1.dtype == r2.dtype == np.float32
            np.testing.assert_array_equal(d1, d2)
            for a, b in zip(i1, i2):
                assert a.keys() == b.keys()
                assert a["TimeLimit.truncated"] == b["TimeLimit.truncated"]
                if "terminal_observation" in a:
                    np.testing.assert_allclose(a["terminal_observation"], b["terminal_observation"], rtol=1e-6)
                    assert (a["episode"]["r"], a["episode"]["l"]) == (b["episode"]["r"], b["episode"]["l"])
                    episodes += 1
        assert episodes > 50
        assert remote.env_is_wrapped(Monitor) == [True] * N
        assert remote.get_attr("render_mode") == ["rgb_array"] * N
        assert remote.env_method("get_total_steps") == local.env_method("get_total_steps")
        remote.close()
    finally:
        remoterl_ray.shutdown()


def test_one_frame_per_simulator_per_step(trainer):
    env = make_vec_env("CartPole-v1", n_envs=16)
    env.reset()
    conn = trainer.links.conn
    before = conn.counters.frames_sent
    for _ in range(20):
        env.step(np.zeros(16, dtype=np.int64))
    assert conn.counters.frames_sent - before == 20 * len(env.venv.shard_sizes) == 20 * 2
    env.close()


@pytest.mark.parametrize("cls", [DummyVecEnv, SubprocVecEnv])
def test_vec_env_classes_from_gym_make_factories_are_remote(trainer, cls):
    env = cls([lambda: gym.make("CartPole-v1") for _ in range(6)])
    assert isinstance(env, RemoteVecEnv)
    assert env.num_envs == 6 and env.venv.shard_sizes == [3, 3]
    env.seed(7)
    obs = env.reset()
    assert obs.shape == (6, 4)
    obs, rewards, dones, infos = env.step(np.ones(6, dtype=np.int64))
    assert rewards.shape == (6,) and len(infos) == 6
    env.close()


def test_factories_with_other_wrappers_fall_back_to_per_env_remote_envs(trainer):
    def factory():
        return Monitor(TransformObservation(gym.make("CartPole-v1"), lambda o: o * 2, None))

    calls = []
    env = DummyVecEnv([lambda: calls.append(1) or factory(), lambda: calls.append(2) or factory()])
    assert isinstance(env, DummyVecEnv) and not isinstance(env, RemoteVecEnv)
    assert calls == [1, 2]  # each factory ran once
    obs = env.reset()
    assert obs.shape == (2, 4)
    assert isinstance(env.envs[0].env.env, DeferredEnv)
    assert env.envs[0].env.env.remote.channel  # a real remote env underneath
    for _ in range(30):
        obs, _, _, _ = env.step(np.zeros(2, dtype=np.int64))
    env.close()


def test_sb3_wrappers_and_episode_statistics_during_learning(trainer, tmp_path):
    env = make_vec_env("CartPole-v1", n_envs=N, seed=0, monitor_dir=str(tmp_path))
    env = VecFrameStack(VecNormalize(env), n_stack=2)
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=128, n_epochs=1, seed=0)
    model.learn(total_timesteps=2048)
    stats = list(model.ep_info_buffer)
    assert len(stats) > 20
    assert all(s["l"] >= 1 and s["r"] == pytest.approx(s["l"]) for s in stats)  # CartPole: reward 1 per step
    monitor = load_results(str(tmp_path))
    assert len(monitor) >= len(stats) and (monitor["l"] >= 1).all()
    env.close()


def test_issue_example_one_worker_32_envs(relay, keys):
    """The README/issue trainer: num_workers=1, num_env_runners=8, 32 envs on one simulator."""
    with serving(relay, keys, 1) as key:
        assert init_trainer(relay, key, num_workers=1, num_env_runners=8)
        try:
            env = make_vec_env("CartPole-v1", n_envs=32)
            assert env.venv.shard_sizes == [32]  # only one simulator online: all envs go there
            model = PPO("MlpPolicy", env, n_steps=16, batch_size=256, n_epochs=1)
            model.learn(total_timesteps=1024)
            assert model.num_timesteps >= 1024
        finally:
            remoterl_ray.shutdown()


def test_shutdown_puts_local_vec_envs_back(relay, two_sims):
    assert init_trainer(relay, two_sims, num_workers=2)
    assert isinstance(make_vec_env("CartPole-v1", n_envs=2), RemoteVecEnv)
    remoterl_ray.shutdown()
    for cls in (DummyVecEnv, SubprocVecEnv):
        env = make_vec_env("CartPole-v1", n_envs=2, vec_env_cls=cls)
        assert type(env) is cls
        env.close()


def test_sb3_imported_after_init_is_patched_on_import(relay, two_sims, tmp_path):
    """init registers a post-import hook: a fresh interpreter that imports SB3 late still gets remote envs."""
    script = tmp_path / "late_import.py"
    script.write_text(
        "import sys, remoterl\n"
        f"assert remoterl.init({two_sims!r}, relay_url={relay.url!r}, num_workers=2)\n"
        "assert 'stable_baselines3' not in sys.modules\n"
        "from stable_baselines3.common.env_util import make_vec_env\n"
        "env = make_vec_env('CartPole-v1', n_envs=4)\n"
        "print(type(env).__name__, env.venv.shard_sizes)\n"
        "remoterl.shutdown()\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "RemoteVecEnv [2, 2]" in out.stdout


def test_envs_registered_with_a_callable_stay_local_in_vec_envs(trainer):
    from remoterl_testenvs import CounterEnv

    class NestedCounter(CounterEnv):  # not importable by module and name: stays local
        pass

    try:
        gym.register("LocalCounter-v0", entry_point=NestedCounter)
        env = make_vec_env("LocalCounter-v0", n_envs=2)
        assert not isinstance(env, RemoteVecEnv)
        assert all(isinstance(e.unwrapped, NestedCounter) for e in env.envs)
        env.reset()
        env.step(np.ones(2, dtype=np.int64))
        env.close()
    finally:
        gym.registry.pop("LocalCounter-v0", None)

"""Large observations end to end: Atari and CarRacing frames, compressed or raw,
a 64 MiB observation in chunks, and videos recorded from remote renders; each
run side by side with the same env made locally, step for step.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from conftest import TEST_ENVS_ALLOW, SimulatorPool, init_trainer, local_gym
from latency_proxy import LatencyProxy
from test_determinism import assert_identical

import remoterl_ray
from remoterl_ray.local import start_relay
from remoterl_ray.trainer.configure import current_session
from remoterl_ray.trainer.remote_env import RemoteEnv
from remoterl_ray.trainer.session import TrainerSession
from remoterl_ray.trainer.settings import TrainerSettings

ALLOW = (*TEST_ENVS_ALLOW, "ale_py")  # "ale_py:ALE/Pong-v5": Gymnasium imports ale_py, which registers ALE's envs
PONG = "ale_py:ALE/Pong-v5"


@pytest.fixture(scope="module")
def workspace(relay, keys):
    key = keys.take()
    pool = SimulatorPool(relay, key)
    pool.start(2, allow=ALLOW)
    yield relay, key
    pool.stop()


@pytest.fixture(params=["auto", "none"])
def trainer(request, workspace):
    relay, key = workspace
    assert init_trainer(relay, key, compression=request.param, num_env_runners=2)
    yield request.param
    remoterl_ray.shutdown()


def received() -> int:
    return int(current_session().metrics_snapshot()["bytes_received"])


def assert_same(got, want) -> None:
    assert_identical(want, got)  # value and type, infos included


def run_side_by_side(make, steps: int, seed: int = 0) -> None:
    env = make()
    with local_gym():
        local = make()
    rng = np.random.default_rng(seed)
    try:
        assert_same(env.reset(seed=seed), local.reset(seed=seed))
        env.action_space.seed(seed)
        for _ in range(steps):
            action = (
                rng.integers(0, env.action_space.n) if hasattr(env.action_space, "n") else env.action_space.sample()
            )
            got, want = env.step(action), local.step(action)
            assert_same(got, want)
            if got[2] or got[3]:
                assert_same(env.reset(), local.reset())
    finally:
        env.close()
        local.close()


def test_raw_pong_frames_equal_local_and_auto_compresses_them(trainer):
    before = received()
    run_side_by_side(lambda: gym.make(PONG, obs_type="rgb"), steps=150)
    per_step = (received() - before) / 151
    raw = 210 * 160 * 3
    if trainer == "auto":
        assert per_step < 0.35 * raw, per_step  # the bound; lz4 does far better
    else:
        assert per_step > raw, per_step


def test_preprocessed_pong_with_frame_stacking_on_the_trainer_equals_local(trainer):
    def make():
        return gym.wrappers.FrameStackObservation(gym.make("remoterl_testenvs:PongPreprocessed-v0"), 4)

    run_side_by_side(make, steps=120)


@pytest.mark.parametrize("env_id, kwargs, steps", [(PONG, {"obs_type": "rgb"}, 60), ("CarRacing-v3", {}, 25)])
def test_vector_envs_over_two_simulators_equal_local(trainer, env_id, kwargs, steps):
    env = gym.make_vec(env_id, num_envs=4, vectorization_mode="sync", **kwargs)
    with local_gym():
        local = gym.make_vec(env_id, num_envs=4, vectorization_mode="sync", **kwargs)
    try:
        assert env.shard_sizes == [2, 2]
        assert_same(env.reset(seed=5), local.reset(seed=5))
        env.action_space.seed(5)
        for _ in range(steps):
            actions = env.action_space.sample()
            assert_same(env.step(actions), local.step(actions))
    finally:
        env.close()
        local.close()


def test_car_racing_frames_equal_local(trainer):
    run_side_by_side(lambda: gym.make("CarRacing-v3"), steps=60)


@pytest.mark.parametrize("trainer", ["auto"], indirect=True)  # float arrays travel raw under auto too
def test_a_64_mib_observation_crosses_the_relay_in_chunks(trainer):
    size = 16 << 20  # float32: 64 MiB, four times the relay's frame limit
    before = received()
    run_side_by_side(lambda: gym.make("remoterl_testenvs:BigObs-v0", size=size), steps=2)
    assert received() - before > 3 * size * 4


def test_a_video_of_a_remote_env_has_the_frames_of_a_local_one(trainer, tmp_path):
    def make(folder):
        env = gym.make("CarRacing-v3", render_mode="rgb_array")
        return gym.wrappers.RecordVideo(
            env, str(tmp_path / folder), episode_trigger=lambda _: True, disable_logger=True
        )

    remote = make("remote")
    with local_gym():
        local = make("local")
    remote.reset(seed=2)
    local.reset(seed=2)
    remote.action_space.seed(2)
    for _ in range(20):
        action = remote.action_space.sample()
        remote.step(action)
        local.step(action)
    assert len(remote.recorded_frames) == len(local.recorded_frames) == 21
    for got, want in zip(remote.recorded_frames, local.recorded_frames):
        assert got.shape == want.shape == (400, 600, 3) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, want)
    remote.close()
    local.close()
    assert [p.name for p in (tmp_path / "remote").glob("*.mp4")] == [p.name for p in (tmp_path / "local").glob("*.mp4")]
    assert list((tmp_path / "remote").glob("*.mp4"))


@pytest.fixture(scope="module")
def tight_relay(keys):
    """A relay with 1 MiB frames and 4 MiB queued per peer: a 16 MiB observation is 17 chunks,
    four times what the relay may queue for its trainer."""
    key = keys.take()
    relay = start_relay(api_keys=[key], extra_args=["--max-frame", str(1 << 20), "--max-peer-buffer", str(4 << 20)])
    pool = SimulatorPool(relay, key)
    pool.start(1)
    yield relay, key
    pool.stop()
    relay.stop()


def test_a_message_many_times_the_relays_queue_waits_for_its_reader_instead_of_cutting_it_off(tight_relay):
    """The trainer reads through a 40 MB/s link: without flow control the relay queues far past
    the trainer's 4 MiB and cuts it off (its env is then made again, and a step says so)."""
    relay, key = tight_relay
    host, port = relay.url.removeprefix("ws://").split(":")
    with LatencyProxy(host, int(port), delay=0.0, rate=40e6) as link:
        url = f"ws://127.0.0.1:{link.port}"
        session = TrainerSession(TrainerSettings(relay_url=url, api_key=key, timeout=60, resume_window=0))
        try:
            assert session.links.wait_for_simulators(1, 30) == 1
            env = RemoteEnv(session, "remoterl_testenvs:BigObs-v0", size=4 << 20)
            with local_gym():
                local = gym.make("remoterl_testenvs:BigObs-v0", size=4 << 20)
            assert_same(env.reset(seed=1), local.reset(seed=1))
            for action in (1, 0, 1):
                assert_same(env.step(action), local.step(action))
            env.close()
        finally:
            session.close()


@pytest.mark.parametrize("trainer", ["auto"], indirect=True)
def test_sb3_video_recorder_of_remote_envs_has_the_frames_of_local_ones(trainer, tmp_path):
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecVideoRecorder

    def make(folder):
        venv = make_vec_env("CarRacing-v3", n_envs=2, seed=4, env_kwargs={"render_mode": "rgb_array"})
        return VecVideoRecorder(venv, str(tmp_path / folder), record_video_trigger=lambda step: step == 0,
                                video_length=10)  # fmt: skip

    remote = make("remote")
    with local_gym():
        local = make("local")
    remote.reset()
    local.reset()
    rng = np.random.default_rng(4)
    for _ in range(5):
        actions = rng.uniform(-1, 1, size=(2, 3)).astype(np.float32)
        remote.step(actions)
        local.step(actions)
    assert len(remote.recorded_frames) == len(local.recorded_frames) == 6
    for got, want in zip(remote.recorded_frames, local.recorded_frames):
        assert got.shape == want.shape == (800, 600, 3)  # SB3 tiles the two envs' 600x400 frames
        np.testing.assert_array_equal(got, want)
    remote.close()
    local.close()

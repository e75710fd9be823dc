"""Remote-env metrics land in TensorBoard event files, read back with TensorBoard's own reader."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from conftest import init_trainer, serving
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import remoterl_ray
from remoterl_ray.trainer import metrics

TAGS = [
    metrics.STEP_LATENCY_P50_MS,
    metrics.STEP_LATENCY_P99_MS,
    metrics.ENV_STEPS_PER_S,
    metrics.BYTES_SENT,
    metrics.BYTES_RECEIVED,
    metrics.SIMULATORS,
    metrics.RESUMES,
]


def test_tensorboard_event_files_hold_the_remote_env_metrics(relay, keys, tmp_path, monkeypatch):
    monkeypatch.setenv("REMOTERL_TENSORBOARD_DIR", str(tmp_path))  # the env-var route
    with serving(relay, keys, 2) as key:
        assert init_trainer(relay, key, num_workers=2, num_env_runners=4)
        try:
            envs = gym.make_vec("CartPole-v1", num_envs=8, vectorization_mode="sync")
            envs.reset(seed=0)
            for _ in range(300):
                envs.step(np.zeros(8, dtype=np.int64))
            envs.close()
        finally:
            remoterl_ray.shutdown()  # writes the last point and closes the file
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert sorted(scalars) == sorted("remoterl/" + t for t in TAGS)
    last = {t: events.Scalars("remoterl/" + t)[-1] for t in TAGS}
    assert last[metrics.SIMULATORS].value == 2
    assert last[metrics.RESUMES].value == 0  # nothing dropped: no channel resumed
    assert last[metrics.SIMULATORS].step == 300 * 8  # x axis: env-steps taken
    assert 0 < last[metrics.STEP_LATENCY_P50_MS].value <= last[metrics.STEP_LATENCY_P99_MS].value
    assert last[metrics.BYTES_RECEIVED].value > last[metrics.BYTES_SENT].value > 0
    first = events.Scalars("remoterl/" + metrics.ENV_STEPS_PER_S)[0]
    assert first.value > 0

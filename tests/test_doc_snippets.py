"""The Python snippets of the README and docs/ run as written, against a local relay.

Each fenced ``python`` block is run in a fresh interpreter, with only the
placeholders a reader fills in replaced (the relay's address, the key) and
training budgets made small. A block that cannot run on this machine says why
in a ``<!-- not run: ... -->`` line just above it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import TEST_ENVS_ALLOW, SimulatorPool, sim_env
from support.doc_blocks import blocks

SMALL_BUDGETS = {  # the budgets, not the calls: one small rollout and update each
    "total_timesteps=100_000": "total_timesteps=2_048",
    'PPO("MlpPolicy", env, verbose=1)': 'PPO("MlpPolicy", env, verbose=1, n_steps=64)',
    ".env_runners(num_env_runners=2).build_algo()": (
        ".env_runners(num_env_runners=2).training(train_batch_size_per_learner=256, minibatch_size=64, num_epochs=1)"
        ".build_algo()"
    ),
}
# The multi-agent envs the docs make (docs/integrations.md).
DOC_ENVS_ALLOW = (
    "ray.rllib.examples.envs.classes.multi_agent",
    "pettingzoo.classic.rps_v2:parallel_env",
    "pettingzoo.classic.tictactoe_v3:env",
)
ALL = [(block.where, block.code, block.not_run) for block in blocks("python")]


def test_every_python_snippet_is_run_or_says_why_not():
    assert len(ALL) >= 6
    for where, _, why in ALL:
        assert why is None or len(why) > 20, f"{where}: say why it cannot run"


@pytest.fixture(scope="module")
def workspace(relay, keys):
    key = keys.take()
    pool = SimulatorPool(relay, key)
    pool.start(2, allow=(*TEST_ENVS_ALLOW, *DOC_ENVS_ALLOW))
    yield relay.url, key
    pool.stop()


@pytest.mark.parametrize("where, code, why", ALL, ids=[where for where, _, _ in ALL])
def test_snippet_runs_as_written(workspace, tmp_path, where, code, why):
    if why is not None:
        pytest.skip(why)
    url, key = workspace
    filled = code.replace("ws://relay-host:8000", url).replace("YOUR_KEY", key)
    for big, small in SMALL_BUDGETS.items():
        filled = filled.replace(big, small)
    script = tmp_path / "snippet.py"
    script.write_text(filled)
    env = {**os.environ, **sim_env(), "RAY_DEDUP_LOGS": "0"}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env=env)  # fmt: skip
    assert out.returncode == 0, f"{where} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"

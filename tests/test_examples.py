"""Every example in examples/ runs as written against a real relay and simulator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import new_key

from remoterl_ray.local import LocalProcess, start_relay

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def served(keys):
    key = new_key("examples")
    relay = start_relay(api_keys=[key])
    env = dict(os.environ, REMOTERL_API_KEY=key, REMOTERL_RELAY_URL=relay.url)
    sim = LocalProcess([sys.executable, str(EXAMPLES / "simulator.py")], env=env)
    relay.wait_for(key, "simulator", 1)
    yield env
    assert sim.stop() == 0, sim.output()  # SIGTERM: the example returns cleanly
    relay.stop()


def test_gym_cartpole_example(served):
    out = subprocess.run([sys.executable, str(EXAMPLES / "gym_cartpole.py")], env=served,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "single env: return" in out.stdout
    assert "episodes finished in 300 steps" in out.stdout


def test_demo_command_runs():
    out = subprocess.run([sys.executable, "-m", "remoterl", "demo", "--steps", "50", "--envs", "4"],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "env-steps/s" in out.stdout


def test_benchmark_smoke_run():
    script = Path(__file__).resolve().parents[1] / "bench" / "core_path.py"
    out = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "bytes per env-step" in out.stdout

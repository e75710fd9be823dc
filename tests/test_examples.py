"""Every example in examples/ runs as written against a real relay and simulator."""

from __future__ import annotations

import os
import re
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
    # The custom env example's package, importable and allowed on the simulator only.
    sim_env = dict(env, PYTHONPATH=str(EXAMPLES / "custom_env"), REMOTERL_ALLOW_MODULES="gridwalk")
    sim = LocalProcess([sys.executable, str(EXAMPLES / "simulator.py")], env=sim_env)
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


def run_example(path: Path, env: dict[str, str], timeout: float = 300, **budget: int) -> str:
    env = dict(env, **{k: str(v) for k, v in budget.items()})
    out = subprocess.run([sys.executable, str(path)], env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def test_sb3_ppo_example(served):
    out = run_example(EXAMPLES / "sb3_ppo.py", served, EXAMPLE_TIMESTEPS=2048)
    trained = re.search(r"trained (\d+) steps; mean return of the last (\d+) episodes", out)
    assert trained and int(trained[2]) > 0, out[-2000:]
    assert 2048 <= int(trained[1]) <= 2 * 2048, "the example keeps to its step budget (one rollout past it at most)"


def test_rllib_ppo_example(served):
    out = run_example(EXAMPLES / "rllib_ppo.py", served, EXAMPLE_ITERATIONS=1)
    assert "iteration 1: mean return" in out and "remote step p50" in out


def test_tune_sweep_example(served):
    out = run_example(EXAMPLES / "tune_sweep.py", served, EXAMPLE_ITERATIONS=1)
    assert "best lr" in out


def test_custom_env_example(served):
    out = run_example(EXAMPLES / "custom_env" / "train.py", served, EXAMPLE_STEPS=400)
    assert "GridWalk-v0 on [8] remote envs" in out
    assert "gridwalk" not in sys.modules  # the trainer never imported the env's code


@pytest.mark.parametrize("framework", ["sb3", "rllib"])
def test_demo_command_trains(framework, tmp_path):
    args = ["--framework", framework, "--timesteps", "1000", "--envs", "4", "--logdir", str(tmp_path)]
    scratch = tmp_path / "tmp"  # the demo's own temp files (process logs, the relay's store) go here
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)} if framework == "sb3" else None  # Ray's sockets need short paths
    out = subprocess.run([sys.executable, "-m", "remoterl", "demo", *args],
                         capture_output=True, text=True, timeout=400, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "final mean return" in out.stdout and "TensorBoard logs" in out.stdout
    assert list((tmp_path / "remoterl").glob("events.out.tfevents.*")), "remote-env metrics were logged"
    if env is not None:
        assert not list(scratch.glob("remoterl-*")), "the demo left its temp files behind"


def run_bench(script: str, *args: str, timeout: int = 300) -> str:
    """A benchmark's smoke run (never its numbers: those are not for tests); its output."""
    path = Path(__file__).resolve().parents[1] / "bench" / script
    out = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def test_benchmark_smoke_run():
    assert "bytes per env-step" in run_bench("core_path.py", "--quick")


def test_training_benchmark_smoke_run():
    assert "remote/local wall time" in run_bench("training.py", "--quick", "--frameworks", "sb3")


def test_serve_benchmark_smoke_run():
    """Also runs ``remoterl relay --serve`` behind HAProxy, dialled directly (tests/test_serve.py
    runs Serve's own proxy)."""
    out = run_bench("serve_path.py", "--quick", "--variants", "direct", timeout=600)
    for variant in ("embedded", "direct"):
        assert f"\n{variant} " in out
    assert "idle simulator connections" in out


def test_placement_benchmark_smoke_run():
    out = run_bench("placement.py", "--quick")
    assert "large opens, crowded workspace" in out


def test_dashboard_latency_benchmark_smoke_run():
    out = run_bench("dashboard_latency.py", "3")
    assert "over 3 trainers" in out
    for label in ("appear", "disappear"):
        assert re.search(rf"^{label} +\d+\.\d+ +\d+\.\d+", out, re.M), out


def test_dashboard_events_benchmark_smoke_run():
    out = run_bench("dashboard_events.py", "10", "100")
    rows = re.findall(r"^ +(\d+) +([\d,]+) B", out, re.M)
    assert [n for n, _ in rows] == ["10", "100"], out
    assert all(int(size.replace(",", "")) < 64_000 for _, size in rows), out


def test_async_stepping_benchmark_smoke_run():
    out = run_bench("async_stepping.py", "--quick", "--rllib")
    assert "recv / (near alone + far alone)" in out and "lockstep" in out
    assert re.search(r"^rllib first-ready +[\d,]+", out, re.M) and "first-ready / lockstep" in out, out


def test_relay_capacity_benchmark_smoke_run():
    out = run_bench("relay_capacity.py", "--quick")
    assert re.search(r"^relay +[\d,]+", out, re.M) and re.search(r"^floor +[\d,]+", out, re.M), out


def test_scaling_benchmark_smoke_run():
    out = run_bench("scaling.py", "--quick")
    assert re.search(r"^ +2 +8 +[\d.]+ +[\d.]+", out, re.M), out


def test_resume_benchmark_smoke_run():
    out = run_bench("resume.py", "--quick")
    for phase in ("relay restart, from relay back", "trainer connection dropped", "simulator connection dropped"):
        assert re.search(rf"^{phase} +p50 +\d+\.\d+ s", out, re.M), out


def test_large_observations_benchmark_smoke_run():
    out = run_bench("large_obs.py", "--quick")
    assert re.search(r"^raw +4 +auto +[\d.]+", out, re.M) and "1 MB observation: remote / raw forward" in out, out

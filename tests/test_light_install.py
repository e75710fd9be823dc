"""The base install is light: a simulator machine and an embedded relay need
neither Ray nor torch.

Installs this checkout with no extras into a fresh virtualenv, checks that
``ray`` and ``torch`` cannot be imported there and that the integrations say
which extra they need, then runs a relay and a simulator from that venv and
steps an env on them from this (full) environment. Prints the venv's size
and install time (recorded in docs/benchmarks.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import venv
from pathlib import Path

import gymnasium as gym
import pytest

import remoterl_ray
from remoterl_ray.local import free_port

CHECKOUT = Path(__file__).resolve().parents[1]


def run(python: Path, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd)


def wait_healthy(url: str, deadline: float) -> None:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not healthy in time")
        time.sleep(0.2)


def dir_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("light")
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    started = time.monotonic()
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(CHECKOUT)], check=True, timeout=900, cwd=root)
    seconds = time.monotonic() - started
    print(f"\nbase install: {dir_bytes(env_dir) / 2**20:.0f} MiB in {seconds:.0f} s", file=sys.stderr)
    return python


def test_the_base_install_has_no_ray_and_no_torch(light_venv):
    cwd = light_venv.parents[2]  # not the checkout: the venv's own copy is imported
    for heavy in ("ray", "torch", "stable_baselines3", "tensorboard"):
        assert run(light_venv, f"import {heavy}", cwd).returncode != 0, heavy
    for module, extra in (("remoterl_ray.rllib", "rllib"), ("remoterl_ray.sb3", "sb3")):
        out = run(light_venv, f"import {module}", cwd)
        assert out.returncode != 0 and f"pip install 'remoterl-ray[{extra}]'" in out.stderr, out.stderr[-500:]
    served = subprocess.run(
        [str(light_venv), "-m", "remoterl_ray", "relay", "--serve", "--open"],
        capture_output=True, text=True, timeout=120, cwd=cwd,
    )  # fmt: skip
    assert served.returncode != 0 and "remoterl-ray[serve]" in served.stdout + served.stderr
    assert "Traceback" not in served.stderr


def test_a_relay_and_a_simulator_run_from_the_base_install(light_venv, trainer_cleanup):
    cwd = light_venv.parents[2]
    port = free_port()
    env = {**os.environ, "REMOTERL_DB": str(cwd / "relay.db"), "PYTHONPATH": ""}
    relay = subprocess.Popen(
        [str(light_venv), "-m", "remoterl_ray", "relay", "--open", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env,
    )  # fmt: skip
    simulator = None
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", time.monotonic() + 60)
        simulator = subprocess.Popen(
            [str(light_venv), "-m", "remoterl_ray", "simulator", "--relay", f"ws://127.0.0.1:{port}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
            env={**env, "REMOTERL_API_KEY": "light-key"},
        )  # fmt: skip
        assert remoterl_ray.init("light-key", role="trainer", relay_url=f"ws://127.0.0.1:{port}", simulator_wait=60)
        env_ = gym.make("CartPole-v1")
        obs, _ = env_.reset(seed=0)
        assert obs.shape == (4,) and env_.step(1)[0].shape == (4,)
        env_.close()
    finally:
        remoterl_ray.shutdown()
        for proc in (simulator, relay):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()


def test_a_missing_extra_is_one_line_naming_it(tmp_path, monkeypatch):
    from remoterl_ray.extras import MissingExtraError, require

    with pytest.raises(MissingExtraError, match=r"the thing needs no_such_pkg_xyz.*remoterl-ray\[serve\]"):
        require("no_such_pkg_xyz.sub", "the thing", "serve")
    broken = tmp_path / "half_installed"
    broken.mkdir()
    (broken / "__init__.py").write_text("import no_such_dependency_abc\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as raised:  # installed but broken inside: not renamed
        require("half_installed", "the thing", "sb3")
    assert not isinstance(raised.value, MissingExtraError)

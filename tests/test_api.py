"""The public surface: init/shutdown contract, the remoterl alias, the CLI, and
the no-code-from-the-wire rule."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import gymnasium.envs
import gymnasium.envs.registration as registration
import pytest
from conftest import init_trainer, serving

import remoterl_ray

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workspace(relay, keys):
    with serving(relay, keys, 1) as key:
        yield key


def gym_functions():
    return {
        (mod.__name__, name): getattr(mod, name)
        for mod in (gym, gymnasium.envs, registration)
        for name in ("make", "make_vec", "register")
        if hasattr(mod, name)
    }


def test_shutdown_restores_the_exact_original_functions(relay, workspace):
    before = gym_functions()
    assert init_trainer(relay, workspace)
    patched = gym_functions()
    assert all(patched[k] is not before[k] for k in before)
    assert isinstance(gym.make("CartPole-v1"), remoterl_ray.RemoteEnv)
    remoterl_ray.shutdown()
    after = gym_functions()
    assert all(after[k] is before[k] for k in before)
    remoterl_ray.shutdown()  # idempotent
    assert gym_functions() == before
    assert not isinstance(gym.make("CartPole-v1"), remoterl_ray.RemoteEnv)


def test_init_twice_replaces_the_session_and_restores_once(relay, workspace):
    before = gym_functions()
    assert init_trainer(relay, workspace)
    first = remoterl_ray.current_session()
    assert init_trainer(relay, workspace)
    assert remoterl_ray.current_session() is not first
    remoterl_ray.shutdown()
    assert gym_functions() == before


def test_shutdown_runs_at_interpreter_exit(relay, workspace):
    script = (
        "import atexit, gymnasium as gym, remoterl\n"
        "orig = gym.make\n"
        "atexit.register(lambda: print('restored', gym.make is orig, flush=True))\n"
        f"assert remoterl.init({workspace!r}, relay_url={relay.url!r})\n"
        "assert gym.make is not orig\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "restored True" in out.stdout  # registered later, remoterl's hook runs first (LIFO)


def test_remoterl_alias_and_fixed_signature():
    import remoterl

    assert remoterl.init is remoterl_ray.init and remoterl.shutdown is remoterl_ray.shutdown
    params = inspect.signature(remoterl.init).parameters
    assert list(params)[:2] == ["api_key", "role"]
    assert params["api_key"].default is None and params["role"].default == "trainer"
    for name, default in (("num_workers", 1), ("num_env_runners", 2), ("relay_url", None), ("allow_modules", None)):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY and params[name].default == default
    with pytest.raises(ValueError, match="role"):
        remoterl.init("k", role="observer")
    with pytest.raises(ValueError, match="at least 1"):
        remoterl.init("k", num_env_runners=0)


def test_env_vars_supply_key_and_relay_url(relay, workspace, monkeypatch, trainer_cleanup):
    monkeypatch.setenv("REMOTERL_API_KEY", workspace)
    monkeypatch.setenv("REMOTERL_RELAY_URL", relay.url)
    assert remoterl_ray.init(role="trainer") is True


def test_cli_relay_needs_keys_or_open():
    out = subprocess.run([sys.executable, "-m", "remoterl_ray", "relay"], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "--open" in out.stderr


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "remoterl_ray", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for command in ("relay", "simulator", "keys", "usage", "demo"):
        assert command in out.stdout


def test_nothing_from_the_wire_is_unpickled_or_executed():
    pattern = re.compile(r"^\s*(import|from)\s+(pickle|cloudpickle|marshal|dill|shelve)\b|[^.\w](eval|exec)\(")
    offenders = []
    for base in ("remoterl_ray", "remoterl", "serve_apps"):
        for path in (ROOT / base).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, offenders
    assert (ROOT / "remoterl_ray").is_dir()  # the scan really looked at the package

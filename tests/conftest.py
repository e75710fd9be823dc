"""Shared fixtures: a real relay process and real simulator processes on 127.0.0.1.

One relay serves the whole session; each test module that needs simulators
starts its own under its own API key (its own workspace), so tests that kill
or restart things cannot disturb the others.
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import remoterl_ray
from remoterl_ray.local import LocalProcess, LocalRelay, free_port, start_relay, start_simulator
from remoterl_ray.trainer import gym_patch
from remoterl_ray.trainer.gym_patch import GYM_MODULES

SUPPORT = Path(__file__).parent / "support"
sys.path.insert(0, str(SUPPORT))

TEST_ENVS_MODULE = "remoterl_testenvs"
# What test simulators allow by default: the module's env classes, and the one
# function the RLlib tests register as a creator (functions must be named).
TEST_ENVS_ALLOW = (TEST_ENVS_MODULE, f"{TEST_ENVS_MODULE}:make_corridor")

# Relays started by tests keep their accounts in a store of this run, never the user's.
os.environ["REMOTERL_DB"] = os.path.join(tempfile.mkdtemp(prefix="remoterl-tests-"), "relay.db")


def new_key(label: str) -> str:
    return f"test-{label}-{secrets.token_hex(6)}"


def sim_env() -> dict[str, str]:
    """Simulators get the test env module on their path (importing it still needs --allow)."""
    path = os.pathsep.join(p for p in (str(SUPPORT), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


class Keys:
    """Pre-issued keys on the session relay, one per purpose."""

    def __init__(self) -> None:
        self.pool = [new_key(f"k{i}") for i in range(128)]
        self._next = 0

    def take(self) -> str:
        key = self.pool[self._next]
        self._next += 1
        return key


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="session")
def relay(keys: Keys) -> Iterator[LocalRelay]:
    relay = start_relay(api_keys=keys.pool)
    yield relay
    relay.stop()


class SimulatorPool:
    """Simulator processes of one workspace; stopped (or killed) at teardown."""

    def __init__(self, relay: LocalRelay, key: str) -> None:
        self.relay = relay
        self.key = key
        self.procs: list[LocalProcess] = []

    def start(self, count: int = 1, *, allow: tuple[str, ...] = TEST_ENVS_ALLOW, wait: bool = True,
              extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> list[LocalProcess]:
        child_env = {**sim_env(), **(env or {})}
        new = [start_simulator(self.relay.url, self.key, allow=allow, env=child_env, extra_args=extra_args)
               for _ in range(count)]
        self.procs.extend(new)
        if wait:
            self.relay.wait_for(self.key, "simulator", len([p for p in self.procs if p.alive()]))
        return new

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


@contextmanager
def serving(relay: LocalRelay, keys: Keys, count: int, allow: tuple[str, ...] = TEST_ENVS_ALLOW) -> Iterator[str]:
    """A fresh workspace (key) with ``count`` simulators online; stopped on exit."""
    key = keys.take()
    pool = SimulatorPool(relay, key)
    pool.start(count, allow=allow)
    try:
        yield key
    finally:
        pool.stop()


@pytest.fixture(scope="module")
def two_sims(relay: LocalRelay, keys: Keys) -> Iterator[str]:
    """A workspace with two simulators online, one per test module."""
    with serving(relay, keys, 2) as key:
        yield key


@pytest.fixture(scope="module", params=["one", "two"])
def layout(request, relay: LocalRelay, keys: Keys) -> Iterator[str]:
    """A trainer initialized on a workspace with one simulator (a vector env is hosted
    whole) or two (split, at most 2 envs per simulator while there are enough)."""
    with serving(relay, keys, 1 if request.param == "one" else 2) as key:
        assert init_trainer(relay, key, num_env_runners=2)
        try:
            yield request.param
        finally:
            remoterl_ray.shutdown()


@pytest.fixture
def trainer_cleanup() -> Iterator[None]:
    """Whatever a test initialised, shut it down afterwards."""
    yield
    remoterl_ray.shutdown()


class CrashableRelay:
    """A relay of one fresh workspace on a port of its own, with ``simulators`` simulator
    processes, that a test can SIGKILL and start again there (``crash``); its peers dial
    the same URL. Everything is stopped on exit (also a trainer session)."""

    def __init__(self, name: str, simulators: int) -> None:
        self.key = new_key(name)
        self.port = free_port()
        self.relays = [start_relay(api_keys=[self.key], port=self.port)]
        self.pool = SimulatorPool(self.relays[0], self.key)
        self.sims = self.pool.start(simulators) if simulators else []

    @property
    def relay(self) -> LocalRelay:
        return self.relays[-1]

    def crash(self, *, restart: bool = True) -> None:
        """SIGKILL the relay (no goodbye to anyone); start a new, empty one on its port."""
        self.relay.process.kill()
        if restart:
            self.crash_restart()

    def crash_restart(self) -> None:
        """The relay's start after a :meth:`crash` without one."""
        self.relays.append(start_relay(api_keys=[self.key], port=self.port))
        self.pool.relay = self.relay

    def __enter__(self) -> CrashableRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        remoterl_ray.shutdown()
        self.pool.stop()
        for relay in self.relays:
            relay.stop()


def in_thread(call: Callable[[], object]) -> tuple[threading.Thread, dict[str, BaseException]]:
    """``call()`` started in a thread; what it raised lands in the dict under ``"error"``."""
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


@contextmanager
def local_gym() -> Iterator[None]:
    """Gymnasium as it is without remoterl, while inside: baselines built here are
    really local, even those Gymnasium builds through its own ``make`` (a sync
    ``make_vec``, SB3's ``make_vec_env``) while a trainer is initialized."""
    names = ("make", "make_vec", "register")
    saved = {(m, name): getattr(m, name) for m in GYM_MODULES for name in names if hasattr(m, name)}
    for (module, name) in saved:
        setattr(module, name, getattr(gym_patch, f"_ORIGINAL_{name.upper()}"))
    vec_envs = []
    if "stable_baselines3.common.vec_env" in sys.modules:  # SB3's VecEnvs too, if SB3 is in use
        from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

        vec_envs = [(cls, vars(cls).get("__new__")) for cls in (DummyVecEnv, SubprocVecEnv)]
        for cls, _ in vec_envs:
            cls.__new__ = lambda cls, *args, **kwargs: object.__new__(cls)
    try:
        yield
    finally:
        for (module, name), value in saved.items():
            setattr(module, name, value)
        for cls, new in vec_envs:
            cls.__new__ = new if new is not None else (lambda cls, *args, **kwargs: object.__new__(cls))


def init_trainer(relay: LocalRelay, key: str, **kwargs) -> bool:
    kwargs.setdefault("timeout", 30.0)
    kwargs.setdefault("connect_timeout", 10.0)
    kwargs.setdefault("simulator_wait", 10.0)
    return remoterl_ray.init(key, role="trainer", relay_url=relay.url, **kwargs)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """One local Ray instance per module that needs one (starting Ray costs ~15 s); per
    module so that test_serve.py can start its own multi-node cluster afterwards."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


IDLE_PEERS = Path(__file__).resolve().parents[1] / "bench" / "idle_peers.py"


@contextmanager
def idle_peers(
    url: str, keys: list[str], count: int = 1, max_envs: int | None = None, timeout: float = 300.0
) -> Iterator[list[str]]:
    """Hold ``count`` idle simulator connections per key (bench/idle_peers.py, one
    process per key), each declaring ``max_envs`` if given, while inside; yields
    each process's ``ready N direct=D`` line ("" if it failed), waiting at most
    ``timeout`` seconds for them all."""
    import select
    import subprocess
    import time

    declared = [] if max_envs is None else [str(max_envs)]
    holders = [
        subprocess.Popen(
            [sys.executable, str(IDLE_PEERS), url, key, str(count), *declared],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for key in keys
    ]
    try:
        deadline = time.monotonic() + timeout
        lines = []
        for holder in holders:
            assert holder.stdout is not None
            readable, _, _ = select.select([holder.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not readable:
                raise TimeoutError(f"{count} idle peers per key not ready after {timeout}s")
            lines.append(holder.stdout.readline().strip())
        yield lines
    finally:
        for holder in holders:
            if holder.stdin:
                holder.stdin.close()
        for holder in holders:
            try:
                holder.wait(60)
            except subprocess.TimeoutExpired:
                holder.kill()


def stop_serve_and_ray() -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def trainer_steps_once(relay_url: str, key: str, wait: float = 30.0) -> str:
    """A fresh trainer of ``key``'s workspace finds one simulator and steps CartPole
    on it; returns the URL its connection reached."""
    from remoterl_ray.trainer.remote_env import RemoteEnv
    from remoterl_ray.trainer.session import TrainerSession
    from remoterl_ray.trainer.settings import TrainerSettings

    session = TrainerSession(TrainerSettings(relay_url=relay_url, api_key=key))
    try:
        assert session.links.wait_for_simulators(1, wait) == 1, key
        env = RemoteEnv(session, "CartPole-v1")
        env.reset(seed=0)
        env.step(1)
        env.close()
        return session.links.conn.url
    finally:
        session.close()

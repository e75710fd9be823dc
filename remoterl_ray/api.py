"""Layer 7: the public ``init`` / ``shutdown``."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from typing import Literal

from .config import ENV_REGION, resolve_api_key, resolve_ca_file, resolve_relay_url, resolve_resume_window
from .simulator.allowlist import allowed_modules_from_env
from .protocol.errors import NoSimulatorError, RelayUnavailableError, RemoteRLError
from .simulator.host import SimulatorHost, run_simulator
from .trainer.configure import current_session, set_current_session, trainer_settings
from .trainer.fallback_guard import guard_local_fallback
from .trainer.gym_patch import patch_gymnasium
from .trainer.import_hooks import when_imported
from .trainer.patching import Patcher
from .trainer.session import TrainerSession
from .trainer.settings import TrainerSettings

log = logging.getLogger("remoterl")

_lock = threading.RLock()
_patcher = Patcher()
_atexit_registered = False


def init(
    api_key: str | None = None,
    role: Literal["trainer", "simulator"] = "trainer",
    *,
    num_workers: int = 1,
    num_env_runners: int = 2,
    relay_url: str | None = None,
    allow_modules: list[str] | None = None,
    timeout: float | None = None,
    connect_timeout: float | None = None,
    simulator_wait: float | None = None,
    tensorboard_dir: str | None = None,
    region: str | None = None,
    ca_file: str | None = None,
    max_space_bytes: int | None = None,
    resume_window: float | None = None,
    compression: str | None = None,
    max_message: int | None = None,
    strict: bool = True,
) -> bool:
    """Connect this process to a relay as a trainer or a simulator.

    Trainer: returns True once connected and at least one simulator of the
    workspace is online (waiting up to ``simulator_wait`` seconds for
    ``num_workers`` of them), False if the relay or any simulator cannot be
    reached in time; raises ``AuthenticationError`` (a ``RuntimeError``) if the
    relay rejects the key, ``TLSError`` if a ``wss://`` relay's certificate
    cannot be verified. From then on ``gymnasium.make``/``make_vec`` return
    remote envs, each simulator hosting at most ``num_env_runners`` envs of
    this trainer while there are enough simulators (with fewer, the envs are
    spread over those there are).

    Simulator: blocks serving envs until Ctrl-C / SIGTERM, reconnecting with
    backoff whenever the relay goes away, then returns True. ``allow_modules``
    (plus ``REMOTERL_ALLOW_MODULES``) lists the modules whose entry points
    mirrored registrations may import. It dials the relay region with the
    lowest round trip, or ``region`` (or ``REMOTERL_REGION``).

    Also while initialized as trainer: SB3's ``DummyVecEnv``/``SubprocVecEnv``
    (so ``make_vec_env``) build batched remote vector envs, and RLlib
    algorithms and Tune experiments use ``RemoteEnvRunner``. With
    ``tensorboard_dir`` (or ``REMOTERL_TENSORBOARD_DIR``) the remote-env
    metrics are written there as TensorBoard scalars.

    Both roles verify a ``wss://`` relay's certificate against the system
    trust store, or only against ``ca_file`` (or ``REMOTERL_CA_FILE``), PEM
    certificates of a private CA. There is no way to skip verification.

    ``strict`` (trainer): when ``init`` returns False, ``gym.make``/``make_vec``,
    SB3's ``make_vec_env``, RLlib algorithms and Tune tuners raise the reason
    instead of quietly building local envs, until ``shutdown()`` (which makes
    local envs the deliberate choice) or a successful ``init``.

    ``max_space_bytes`` (or ``REMOTERL_MAX_SPACE_BYTES``; default 256 MiB)
    bounds the memory a simulator's space descriptions may make the trainer
    allocate (a vector env's batched spaces included): raise it for larger
    observation spaces.

    ``resume_window`` (or ``REMOTERL_RESUME_WINDOW``; default 120 s): when a
    connection drops (a relay restart, a network blip, a Serve replica going
    away), how long both ends keep a channel's envs and wait for each other to
    resume it; a resumed step returns exactly what it would have without the
    drop (``docs/api.md``, "Resuming"). When the window runs out, the
    episodes end (``SimulatorLostError``, code ``resume_expired``, or, after
    a lost relay connection, envs made again and episodes reported
    truncated). 0 turns resuming off.

    ``compression`` (or ``REMOTERL_COMPRESSION``; default ``"auto"``): what the
    simulators compress in their answers, agreed per env at make. ``"auto"``
    compresses uint8 arrays (camera frames, screens, rgb_array renders) with
    lz4 and leaves small and float arrays raw; ``"lz4"`` and ``"zstd"``
    compress every array of 4 KiB or more; ``"none"`` sends them raw. Lossless
    always. One env can ask for its own: ``gym.make(id,
    remoterl_compression="zstd")``.

    ``max_message`` (or ``REMOTERL_MAX_MESSAGE``; default 256 MiB): the
    largest answer this trainer takes in, in bytes. Answers above the relay's
    frame limit travel in chunks, put together here within this bound.
    """
    if role not in ("trainer", "simulator"):
        raise ValueError(f"role must be 'trainer' or 'simulator', got {role!r}")
    if num_workers < 1 or num_env_runners < 1:
        raise ValueError("num_workers and num_env_runners must be at least 1")
    if role == "simulator":
        modules = list(allow_modules or []) + allowed_modules_from_env()
        host = SimulatorHost(
            resolve_relay_url(relay_url),
            resolve_api_key(api_key),
            allow_modules=modules,
            region=region or os.environ.get(ENV_REGION) or None,
            ca_file=resolve_ca_file(ca_file),
            resume_window=resolve_resume_window(resume_window),
        )
        run_simulator(host)
        return True
    settings = trainer_settings(
        api_key,
        relay_url,
        num_workers=num_workers,
        num_env_runners=num_env_runners,
        timeout=timeout,
        connect_timeout=connect_timeout,
        simulator_wait=simulator_wait,
        tensorboard_dir=tensorboard_dir,
        ca_file=ca_file,
        max_space_bytes=max_space_bytes,
        resume_window=resume_window,
        compression=compression,
        max_message=max_message,
    )
    return _init_trainer(settings, strict=strict)


def _init_trainer(settings: TrainerSettings, *, strict: bool = True) -> bool:
    global _atexit_registered
    with _lock:
        shutdown()
        session = TrainerSession(settings)
        conn = session.links.connect()
        if conn is None:
            reason = f"the relay at {settings.relay_url} is unreachable"
            return _failed(RelayUnavailableError, reason, strict)
        if conn.welcome.quota is not None:
            print(conn.welcome.quota.banner(conn.welcome.workspace), file=sys.stderr, flush=True)
        if session.links.simulators < settings.num_workers:  # a wait a person should see, with its bound
            print(
                f"remoterl: waiting up to {settings.simulator_wait:.0f}s for {settings.num_workers} simulator(s) "
                f"of workspace {conn.welcome.workspace} ({session.links.simulators} online)",
                file=sys.stderr,
                flush=True,
            )
        online = session.links.wait_for_simulators(settings.num_workers, settings.simulator_wait)
        if online == 0:
            session.close()
            reason = f"no simulator of this workspace came online within {settings.simulator_wait:.0f}s"
            return _failed(NoSimulatorError, reason, strict)
        if online < settings.num_workers:
            log.warning("remoterl: %d of %d simulators online; going on with those", online, settings.num_workers)
        set_current_session(session)
        patch_gymnasium(session, _patcher)
        _patch_frameworks(session)
        if not _atexit_registered:
            atexit.register(shutdown)
            _atexit_registered = True
        return True


def _failed(error: type[RemoteRLError], reason: str, strict: bool) -> bool:
    """A trainer ``init`` that failed: say why, and (strict) refuse local envs from now on."""
    then = "building envs raises until shutdown() or a successful init" if strict else "envs stay local"
    log.warning("remoterl: %s; init returns False and %s", reason, then)
    if strict:
        guard_local_fallback(_patcher, error, reason)
    return False


def _patch_frameworks(session: TrainerSession) -> None:
    """Patch SB3 and RLlib/Tune once they are imported (now, or later)."""

    def sb3(_module: object) -> None:
        from .sb3.patch import patch_sb3

        patch_sb3(session, _patcher)

    def rllib(_module: object) -> None:
        from .rllib.patch import patch_rllib

        patch_rllib(_patcher)

    def tune(_module: object) -> None:
        from .rllib.tune_patch import patch_tune

        patch_tune(session, _patcher)

    when_imported("stable_baselines3.common.vec_env", sb3, _patcher)
    when_imported("ray.rllib.algorithms.algorithm", rllib, _patcher)
    when_imported("ray.tune", tune, _patcher)


def shutdown() -> None:
    """Restore every patched function and close the connection. Idempotent."""
    with _lock:
        _patcher.restore()
        session = current_session()
        if session is not None:
            session.close()
            set_current_session(None)


def is_initialized() -> bool:
    return current_session() is not None


__all__ = ["current_session", "init", "is_initialized", "shutdown", "trainer_settings"]

"""Start a relay and simulators as local subprocesses (demo, examples, tests, bench).

Each is a real ``remoterl`` process talking real WebSockets on 127.0.0.1; every
wait here is bounded and raises with the process's output when it runs out.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from .config import ENV_ADMIN_TOKEN, ENV_API_KEY, ENV_DB
from .relay.auth import OPEN_WORKSPACE, workspace_for_key
from .transport.tls import client_context


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalProcess:
    """A child process whose output goes to a temp file (shown when it fails)."""

    args: list[str]
    env: dict[str, str] | None = None
    popen: subprocess.Popen[bytes] = field(init=False)
    log: IO[bytes] = field(init=False)
    _final_output: str = field(default="", init=False, repr=False)  # what it wrote, once stopped

    def __post_init__(self) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="remoterl-", suffix=".log", delete=False)
        self.popen = subprocess.Popen(
            self.args, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        if self.log.closed:  # stopped: what it wrote was kept, its file removed
            return self._final_output
        self.log.flush()
        with open(self.log.name, "rb") as fh:
            return fh.read().decode(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        if not self.log.closed:  # a stopped process leaves no log file behind
            self._final_output = self.output()
            self.log.close()
            with contextlib.suppress(OSError):
                os.unlink(self.log.name)
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL at once: a crash, as far as its peers can tell."""
        if self.alive():
            self.popen.kill()
            self.popen.wait(10)


def rss_mb(pid: int) -> float:
    """Resident memory of a process on this (Linux) machine, in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "remoterl_ray", *args]


@dataclass
class LocalRelay:
    process: LocalProcess
    host: str
    port: int
    admin_token: str | None = None
    tls: bool = False  # serves wss:// and https://
    ca_file: str | None = None  # what its HTTP helpers verify it with (None: the system trust store)
    temp_dir: str | None = None  # a fresh accounts store made for it: removed when it stops

    @property
    def url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The verifying context for this relay's HTTPS endpoints; None without TLS."""
        return client_context(self.ca_file) if self.tls else None

    def stats(self, timeout: float = 5.0) -> dict[str, Any]:
        request = urllib.request.Request(f"{self.http_url}/v1/stats")
        if self.admin_token:
            request.add_header("Authorization", f"Bearer {self.admin_token}")
        with urllib.request.urlopen(request, timeout=timeout, context=self.ssl_context()) as resp:
            return json.loads(resp.read())

    def peers(self, api_key: str | None, role: str, workspace: str | None = None) -> list[dict[str, Any]]:
        """Peers of ``role`` in ``workspace`` (an account key's workspace name), else the static key's."""
        workspace = workspace or (workspace_for_key(api_key) if api_key else OPEN_WORKSPACE)
        ws = self.stats()["workspaces"].get(workspace, {})
        return list(ws.get(f"{role}s", []))

    def wait_for(
        self, api_key: str | None, role: str, count: int, timeout: float = 30.0, workspace: str | None = None
    ) -> list[dict[str, Any]]:
        """Wait until exactly ``count`` peers of ``role`` are online in the key's workspace."""
        deadline = time.monotonic() + timeout
        while True:
            peers = self.peers(api_key, role, workspace)
            if len(peers) == count:
                return peers
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(peers)} {role}s online after {timeout}s, wanted {count}")
            if not self.process.alive():
                raise RuntimeError(f"relay exited:\n{self.process.output()}")
            time.sleep(0.05)

    def stop(self) -> int | None:
        code = self.process.stop()
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        return code


def wait_http(url: str, process: LocalProcess, timeout: float, *, context: ssl.SSLContext | None = None) -> None:
    """Wait until ``url`` answers; ``context`` verifies an ``https://`` URL (an
    untrusted certificate is raised at once: waiting would not change it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1.0, context=context):
                return
        except OSError as exc:
            if isinstance(getattr(exc, "reason", exc), ssl.SSLCertVerificationError):
                raise
            if not process.alive():
                raise RuntimeError(f"process exited before serving {url}:\n{process.output()}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not up after {timeout}s:\n{process.output()}") from None
            time.sleep(0.05)


def start_relay(
    *,
    api_keys: Sequence[str] = (),
    open_mode: bool = False,
    host: str = "127.0.0.1",
    port: int | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 30.0,
    admin_token: str | None = None,
    env: dict[str, str] | None = None,
    tls: tuple[str, str] | None = None,
    ca_file: str | None = None,
    local_stats: bool = True,
) -> LocalRelay:
    """A relay subprocess; ``admin_token`` travels in its environment, not its argv.

    Without ``--db`` or ``REMOTERL_DB`` it keeps its accounts in a fresh temp
    store, so a demo or benchmark never writes to the user's own. With
    ``tls=(cert_file, key_file)`` it serves ``wss://``/``https://``, and its
    helpers verify it with ``ca_file`` (None: the system trust store)."""
    port = port or free_port(host)
    args = _cli("relay", "--host", host, "--port", str(port), *extra_args)
    if tls:
        args += ["--tls-cert", tls[0], "--tls-key", tls[1]]
    temp_dir = None
    if "--db" not in extra_args and not (env or {}).get(ENV_DB, os.environ.get(ENV_DB)):
        temp_dir = tempfile.mkdtemp(prefix="remoterl-relay-")
        args += ["--db", os.path.join(temp_dir, "relay.db")]
    for key in api_keys:
        args += ["--api-key", key]
    if open_mode:
        args.append("--open")
    if local_stats and not admin_token and "--local-stats" not in extra_args:
        args.append("--local-stats")  # LocalRelay.stats() reads /v1/stats from this machine
    child_env = dict(os.environ, **(env or {}))
    child_env.pop(ENV_ADMIN_TOKEN, None)
    if admin_token:
        child_env[ENV_ADMIN_TOKEN] = admin_token
    relay = LocalRelay(
        LocalProcess(args, env=child_env), host, port, admin_token, tls=tls is not None, ca_file=ca_file,
        temp_dir=temp_dir,
    )  # fmt: skip
    try:
        wait_http(f"{relay.http_url}/healthz", relay.process, timeout, context=relay.ssl_context())
    except BaseException:
        relay.stop()
        raise
    return relay


def start_simulator(
    relay_url: str,
    api_key: str | None,
    *,
    allow: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> LocalProcess:
    """A simulator subprocess; the key travels in its environment, not its argv."""
    args = _cli("simulator", "--relay", relay_url, *extra_args)
    for module in allow:
        args += ["--allow", module]
    child_env = dict(os.environ, **(env or {}))
    child_env.pop(ENV_API_KEY, None)
    if api_key:
        child_env[ENV_API_KEY] = api_key
    return LocalProcess(args, env=child_env)

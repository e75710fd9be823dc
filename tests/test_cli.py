"""The command line a newcomer meets: `remoterl status` and the help texts, run as subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import SimulatorPool

from remoterl_ray.local import LocalProcess, free_port


def remoterl(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "80"}
    return subprocess.run([sys.executable, "-m", "remoterl_ray", *args], capture_output=True, text=True, timeout=120,
                          env=env)  # fmt: skip


def test_status_says_what_a_trainer_here_would_reach(relay, keys):
    key = keys.take()
    before = remoterl("status", "--relay", relay.url, "--api-key", key)
    assert before.returncode == 0, before.stderr
    assert "key:        accepted" in before.stdout and "0 online (start one" in before.stdout
    pool = SimulatorPool(relay, key)
    pool.start(1)
    try:
        report = remoterl("status", "--relay", relay.url.replace("ws://", "http://"), "--api-key", key, "--json")
        data = json.loads(report.stdout)
        assert data["key_accepted"] and data["simulators"] == 1 and data["workspace"]
        assert data["regions"][0]["rtt_ms"] is not None and data["quota"]
    finally:
        pool.stop()


def test_status_names_the_problem_and_exits_2(relay):
    refused = remoterl("status", "--relay", relay.url, "--api-key", "not-a-key")
    assert refused.returncode == 2 and "key:        REFUSED" in refused.stdout and "auth_failed" in refused.stdout
    away = remoterl("status", "--relay", f"ws://127.0.0.1:{free_port()}", "--timeout", "1")
    assert away.returncode == 2 and "NOT reachable" in away.stdout and "Traceback" not in away.stderr


@pytest.mark.parametrize("command", [(), ("relay",), ("simulator",), ("demo",), ("usage",), ("status",),
                                     ("keys", "create"), ("keys", "list"), ("keys", "revoke")])  # fmt: skip
def test_help_reads_as_plain_text(command):
    out = remoterl(*command, "--help")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "``" not in text and "<bool>" not in text and "…" not in text, text
    assert all(len(line) <= 100 for line in text.splitlines())
    if command in (("relay",), ("simulator",)):
        assert "-v, --verbose" in text and "Log at INFO" in text


def serve_env() -> dict[str, str]:
    """A fresh machine's environment: no cluster named, HAProxy's fixed ports free."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    for name in ("HAPROXY_METRICS_PORT", "HAPROXY_STATS_PORT", "FALLBACK_PROXY_HTTP_PORT"):
        env[f"RAY_SERVE_{name}"] = str(free_port())
    return env


def test_serve_start_up_says_what_it_waits_for():
    port = free_port()
    command = ["relay", "--serve", "--open", "--replicas", "2", "--port", str(port)]  # as docs/deployment.md has it
    relay = LocalProcess([sys.executable, "-m", "remoterl_ray", *command], env=serve_env())
    try:
        deadline = time.monotonic() + 300
        while "remoterl relay on Ray Serve at" not in relay.output():
            assert relay.alive(), relay.output()
            assert time.monotonic() < deadline, f"not up after 300 s:\n{relay.output()}"
            time.sleep(0.5)
        steps = [
            "starting a local Ray cluster ...",
            "Ray's and Serve's own logs: ",
            "Ray is up (",
            "deploying relay-local: starting 2 replica(s) ...",
            "relay-local is running (",
            f"remoterl relay on Ray Serve at ws://127.0.0.1:{port} (2 replica(s), region local",
        ]
        text = relay.output()
        at = [text.find(step) for step in steps]
        assert -1 not in at and at == sorted(at), text
        assert " INFO " not in text, "Ray's and Serve's own lines stay in their log files without -v"
    finally:
        relay.popen.send_signal(signal.SIGINT)  # Ctrl-C shuts Serve and its Ray down
        assert relay.popen.wait(60) == 0, relay.output()
        relay.stop()


def test_serve_refuses_more_replicas_than_its_own_cluster_can_place():
    out = subprocess.run([sys.executable, "-m", "remoterl_ray", "relay", "--serve", "--open", "--replicas", "64",
                          "--port", str(free_port())], capture_output=True, text=True, timeout=180,
                         env=serve_env())  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert "64 relay replicas need 64 CPUs" in out.stderr and "use --replicas" in out.stderr
    assert "Traceback" not in out.stderr

"""The command line a newcomer meets: `remoterl status` and the help texts, run as subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import SimulatorPool

from remoterl_ray.local import free_port


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

"""A short run of bench/fuzz_relay.py: random and mutated traffic against a live
relay and simulator must crash nothing, leave no traceback in the relay's log,
and cost a stepping bystander no failed or unmetered step."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FUZZ = Path(__file__).resolve().parents[1] / "bench" / "fuzz_relay.py"


def test_a_short_fuzz_run_breaks_nothing():
    run = subprocess.run(
        [sys.executable, str(FUZZ), "--seconds", "15", "--seed", "20261130"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    assert "processes alive: relay True, simulators [True, True]" in report, report
    assert ", 0 tracebacks" in report and " 0 failed" in report, report

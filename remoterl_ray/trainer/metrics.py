"""Remote-env metrics a trainer keeps about itself.

Every batched step records its round-trip latency and how many env-steps it
carried. ``snapshot()`` turns the window since the previous snapshot into
the numbers integrations report (RLlib results, TensorBoard): latency
p50/p99, env-steps/s, bytes on the wire, the simulators online and how many
times envs resumed after a dropped connection (a running total).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

# Keys of ``snapshot()``: the names in RLlib results and TensorBoard tags.
STEP_LATENCY_P50_MS = "step_latency_p50_ms"
STEP_LATENCY_P99_MS = "step_latency_p99_ms"
ENV_STEPS_PER_S = "env_steps_per_s"
BYTES_SENT = "bytes_sent"
BYTES_RECEIVED = "bytes_received"
SIMULATORS = "simulators"
RESUMES = "resumes"


class RemoteMetrics:
    """Thread-safe; ``record`` is on the stepping path, so it only appends."""

    def __init__(self, window: int = 2048, clock: Callable[[], float] = time.monotonic) -> None:
        self._latencies: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()
        self._clock = clock
        self._env_steps = 0
        self._since = clock()
        self.total_env_steps = 0
        self._resumes = 0

    def resumed(self) -> None:
        """A remote env's cut channels resumed (one count per env, however many channels)."""
        with self._lock:
            self._resumes += 1

    def record(self, seconds: float, env_steps: int) -> None:
        with self._lock:
            self._latencies.append(seconds)
            self._env_steps += env_steps
            self.total_env_steps += env_steps

    def snapshot(self, *, bytes_sent: int, bytes_received: int, simulators: int) -> dict[str, float]:
        """The numbers since the last snapshot (latency over the recent window)."""
        with self._lock:
            now = self._clock()
            elapsed = max(now - self._since, 1e-9)
            steps, self._env_steps, self._since = self._env_steps, 0, now
            latencies = np.fromiter(self._latencies, dtype=float) if self._latencies else None
        out = {
            ENV_STEPS_PER_S: steps / elapsed,
            BYTES_SENT: float(bytes_sent),
            BYTES_RECEIVED: float(bytes_received),
            SIMULATORS: float(simulators),
            RESUMES: float(self._resumes),
        }
        if latencies is not None:
            p50, p99 = np.percentile(latencies, [50, 99])
            out[STEP_LATENCY_P50_MS] = float(p50) * 1e3
            out[STEP_LATENCY_P99_MS] = float(p99) * 1e3
        return out

"""Round-trip times the relay sees from frame headers alone: request forwarded to
a simulator, answer forwarded back (same channel, same sequence id).

Two shapes, both fixed in size whatever the traffic:

* :class:`LatencyWindow`: p50/p99 over the last minute, for the dashboard. Samples
  fall into log-spaced buckets (``BUCKETS_PER_OCTAVE`` per doubling, so a
  quantile is within about 2 % of the true value) kept in ``SLICES`` time slices
  of ``SLICE_SECONDS``; old slices drop out whole.
* :class:`LatencyHistogram`: cumulative counts over Prometheus' bucket bounds
  (``PROMETHEUS_BOUNDS``), the form Prometheus and Grafana aggregate across
  replicas.

Both are updated on the relay's data path, so adding a sample is a few
arithmetic steps and at most one dict update.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left

BUCKETS_PER_OCTAVE = 16
FLOOR_SECONDS = 1e-5  # everything faster counts as 10 µs
TOP_BUCKET = BUCKETS_PER_OCTAVE * 24  # 10 µs * 2**24: about 168 s; slower counts there
SLICE_SECONDS = 10.0
SLICES = 6  # the window: one minute

# Seconds; the same bounds under Ray's metrics and the embedded /metrics.
PROMETHEUS_BOUNDS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


_log2, _PER_FLOOR = math.log2, 1.0 / FLOOR_SECONDS


def bucket_of(seconds: float) -> int:
    if seconds <= FLOOR_SECONDS:
        return 0
    return min(TOP_BUCKET, int(_log2(seconds * _PER_FLOOR) * BUCKETS_PER_OCTAVE))


def value_of(bucket: int) -> float:
    """A bucket's representative value: its geometric middle."""
    return FLOOR_SECONDS * 2.0 ** ((bucket + 0.5) / BUCKETS_PER_OCTAVE)


class LatencyWindow:
    """Quantiles of the samples of the last ``SLICES * SLICE_SECONDS`` seconds.

    Counts are kept per slice and, merged, for the whole window (a slice leaving
    the window is subtracted), so a quantile is one walk over the buckets in use."""

    __slots__ = ("_slices", "_merged")

    def __init__(self) -> None:
        self._slices: list[tuple[int, dict[int, int]]] = []  # (slice number, bucket -> count), oldest first
        self._merged: dict[int, int] = {}  # bucket -> count over the slices kept

    def add(self, seconds: float, now: float) -> None:
        self.add_bucket(bucket_of(seconds), int(now // SLICE_SECONDS))

    def add_bucket(self, bucket: int, number: int) -> None:
        """Count a sample already bucketed, in time slice ``number`` (``now // SLICE_SECONDS``)."""
        slices = self._slices
        if not slices or slices[-1][0] != number:
            self._expire(number)
            slices.append((number, {}))
        counts = slices[-1][1]
        counts[bucket] = counts.get(bucket, 0) + 1
        merged = self._merged
        merged[bucket] = merged.get(bucket, 0) + 1

    def _expire(self, number: int) -> None:
        """Drop the slices that are out of the window at slice ``number``."""
        slices, merged = self._slices, self._merged
        while slices and slices[0][0] <= number - SLICES:
            for b, n in slices.pop(0)[1].items():
                left = merged[b] - n
                if left:
                    merged[b] = left
                else:
                    del merged[b]

    def quantiles(self, now: float | None = None) -> tuple[float, float, int] | None:
        """(p50, p99, samples) in seconds over the window, or None without samples."""
        self._expire(int((time.monotonic() if now is None else now) // SLICE_SECONDS))
        merged = self._merged
        total = sum(merged.values())
        if not total:
            return None
        p50 = p99 = 0.0
        seen, half, top = 0, total * 0.5, total * 0.99
        for b in sorted(merged):
            before, seen = seen, seen + merged[b]
            if before < half <= seen:
                p50 = value_of(b)
            if before < top <= seen:
                p99 = value_of(b)
                break
        return p50, p99, total


class LatencyHistogram:
    """Prometheus-style counts: ``counts[i]`` samples at most ``PROMETHEUS_BOUNDS[i]``
    (not cumulative; the last counts the rest), and their sum."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(PROMETHEUS_BOUNDS) + 1)
        self.sum = 0.0

    def add(self, seconds: float) -> None:
        self.counts[bisect_left(PROMETHEUS_BOUNDS, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs as Prometheus writes them, ending with ``+Inf``."""
        out, running = [], 0
        for bound, n in zip((*map(str, PROMETHEUS_BOUNDS), "+Inf"), self.counts):
            running += n
            out.append((bound, running))
        return out


def rounded_ms(window: LatencyWindow, now: float) -> dict[str, float] | None:
    """``{"p50_ms", "p99_ms", "n"}`` of ``window`` for JSON, or None without samples."""
    q = window.quantiles(now)
    if q is None:
        return None
    return {"p50_ms": round(q[0] * 1000, 2), "p99_ms": round(q[1] * 1000, 2), "n": q[2]}

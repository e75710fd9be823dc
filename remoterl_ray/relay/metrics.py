"""The embedded relay's ``/metrics``: Prometheus text, read from the switchboard
at scrape time (nothing is kept per scrape, and no payload is ever looked at).

The names and labels are those Ray exports for the relay under Serve
(``serve_apps/metrics.py``) without Ray's ``ray_`` prefix, so one Grafana
dashboard (``serve_apps/grafana/``) reads both; it has a ``prefix`` variable.

Counters that outlive a connection (bytes, steps, connection time) are summed
from the accounting deltas each second (:class:`RelayTotals` is a
``UsageObserver``); everything else is read live.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from ..accounts.store import UsageDelta
from ..protocol.frames import Op
from .switchboard import Switchboard

PREFIX = "remoterl_relay_"
MAX_SIMULATOR_SERIES = 1000  # simulators with quantile series of their own (the dashboard shows the rest)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def op_name(op: int) -> str:
    """The ``op`` label: a request kind's name (ops on the board are all known ones)."""
    try:
        return Op(op).name.lower()
    except ValueError:
        return "other"


class RelayTotals:
    """Sums of the per-second usage deltas: the monotonic counters of ``/metrics``."""

    def __init__(self) -> None:
        self.bytes: dict[tuple[str, str], int] = {}  # (workspace, direction)
        self.steps: dict[str, int] = {}
        self.seconds: dict[tuple[str, str], float] = {}  # (workspace, role)

    def observe(self, deltas: list[UsageDelta], board: Switchboard) -> None:
        for d in deltas:
            workspace = board.metric_workspace(d.workspace)
            for direction, n in (("in", d.bytes_in), ("out", d.bytes_out)):
                if n:
                    self.bytes[(workspace, direction)] = self.bytes.get((workspace, direction), 0) + n
            if d.steps and d.role == "trainer":
                self.steps[workspace] = self.steps.get(workspace, 0) + d.steps
            if d.connection_seconds:
                key = (workspace, d.role)
                self.seconds[key] = self.seconds.get(key, 0.0) + d.connection_seconds


class RelayCollector:
    """One scrape: every family the Grafana dashboard reads."""

    def __init__(self, board: Switchboard, totals: RelayTotals, region: str, replica: str = "local") -> None:
        self.board, self.totals = board, totals
        self.place = [region, replica]

    def _family(self, kind: type, name: str, doc: str, labels: list[str], **extra: Any) -> Any:
        return kind(PREFIX + name, doc, labels=["region", "replica", *labels], **extra)

    def collect(self) -> Iterator[Metric]:
        place, totals, board = self.place, self.totals, self.board
        bytes_ = self._family(CounterMetricFamily, "bytes", "Bytes through the relay (in: from peers).",
                              ["workspace", "direction"])  # fmt: skip
        for (workspace, direction), n in totals.bytes.items():
            bytes_.add_metric([*place, workspace, direction], n)
        steps = self._family(CounterMetricFamily, "env_steps", "Env steps trainers took through the relay.",
                             ["workspace"])  # fmt: skip
        for workspace, n in totals.steps.items():
            steps.add_metric([*place, workspace], n)
        seconds = self._family(CounterMetricFamily, "connection_seconds", "Connection time of trainers and simulators.",
                               ["workspace", "role"])  # fmt: skip
        for (workspace, role), s in totals.seconds.items():
            seconds.add_metric([*place, workspace, role], s)
        peers = self._family(GaugeMetricFamily, "peers", "Trainers and simulators online.", ["workspace", "role"])
        online: dict[tuple[str, str], int] = {}
        for name, ws in board.workspaces.items():
            label = board.metric_workspace(name)
            for role, n in (("trainer", len(ws.trainers)), ("simulator", len(ws.simulators))):
                online[(label, role)] = online.get((label, role), 0) + n
        for (label, role), n in online.items():
            peers.add_metric([*place, label, role], n)
        round_trips = self._family(
            HistogramMetricFamily, "round_trip_seconds",
            "Request forwarded to a simulator until its answer is forwarded back (from headers).",
            ["workspace", "op"],
        )  # fmt: skip
        for (workspace, op), h in board.latency.items():
            round_trips.add_metric([*place, workspace, op_name(op)], h.cumulative(), h.sum)
        refusals = self._family(CounterMetricFamily, "refusals", "Frames and hellos refused, by error code.",
                                ["workspace", "code"])  # fmt: skip
        for (workspace, code), n in board.refusals.items():
            refusals.add_metric([*place, workspace, code], n)
        quantiles = self._family(
            GaugeMetricFamily, "simulator_step_seconds",
            "Step round trip of each simulator online, p50 and p99 over the last minute.",
            ["workspace", "simulator", "quantile"],
        )  # fmt: skip
        now, shown = time.monotonic(), 0
        for sim in (s for ws in board.workspaces.values() for s in ws.simulators.values()):
            if shown == MAX_SIMULATOR_SERIES:
                break
            q = sim.latency.quantiles(now)
            if q is not None:
                shown += 1
                label = board.metric_workspace(sim.workspace)
                quantiles.add_metric([*place, label, sim.id, "0.5"], q[0])
                quantiles.add_metric([*place, label, sim.id, "0.99"], q[1])
        return iter((bytes_, steps, seconds, peers, round_trips, refusals, quantiles))


class _Read:
    """Families already read, for ``generate_latest`` to format."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


async def scrape(collector: RelayCollector) -> bytes:
    """The Prometheus text of one scrape: read on the event loop (the board is the
    loop's), formatted in a worker thread (the bulk of the work, with many series)."""
    return await asyncio.to_thread(generate_latest, _Read(list(collector.collect())))  # type: ignore[arg-type]

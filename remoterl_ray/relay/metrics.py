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


# The counters fed by the per-second usage deltas: name -> (help, labels after region, replica).
# Ray's exporter (serve_apps/metrics.py) builds its counters from the same table.
USAGE_COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "bytes": ("Bytes through the relay (in: from peers).", ("workspace", "direction")),
    "env_steps": ("Env steps trainers took through the relay.", ("workspace",)),
    "connection_seconds": ("Connection time of trainers and simulators.", ("workspace", "role")),
}
PEERS_HELP = "Trainers and simulators online."
ROUND_TRIPS = "round_trip_seconds"
ROUND_TRIPS_HELP = "Request forwarded to a simulator until its answer is forwarded back (from headers)."
REFUSALS_HELP = "Frames and hellos refused, by error code."


def usage_increments(deltas: list[UsageDelta], board: Switchboard) -> Iterator[tuple[str, tuple[str, ...], float]]:
    """What a second's deltas add to ``USAGE_COUNTERS``: (counter, label values, amount)."""
    for d in deltas:
        workspace = board.metric_workspace(d.workspace)
        if d.bytes_in:
            yield "bytes", (workspace, "in"), d.bytes_in
        if d.bytes_out:
            yield "bytes", (workspace, "out"), d.bytes_out
        if d.steps and d.role == "trainer":
            yield "env_steps", (workspace,), d.steps
        if d.connection_seconds:
            yield "connection_seconds", (workspace, d.role), d.connection_seconds


def peers_online(board: Switchboard) -> dict[tuple[str, str], int]:
    """Peers online per (workspace label, role)."""
    online: dict[tuple[str, str], int] = {}
    for name, ws in board.workspaces.items():
        label = board.metric_workspace(name)
        for role, n in (("trainer", len(ws.trainers)), ("simulator", len(ws.simulators))):
            online[(label, role)] = online.get((label, role), 0) + n
    return online


class RelayTotals:
    """Sums of the per-second usage deltas: the monotonic counters of ``/metrics``."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[tuple[str, ...], float]] = {name: {} for name in USAGE_COUNTERS}

    def observe(self, deltas: list[UsageDelta], board: Switchboard) -> None:
        for name, labels, amount in usage_increments(deltas, board):
            counts = self.counts[name]
            counts[labels] = counts.get(labels, 0) + amount


class RelayCollector:
    """One scrape: every family the Grafana dashboard reads."""

    def __init__(self, board: Switchboard, totals: RelayTotals, region: str, replica: str = "local") -> None:
        self.board, self.totals = board, totals
        self.place = [region, replica]

    def _family(self, kind: type, name: str, doc: str, labels: tuple[str, ...]) -> Any:
        return kind(PREFIX + name, doc, labels=["region", "replica", *labels])

    def collect(self) -> Iterator[Metric]:
        place, board = self.place, self.board
        families = []
        for name, (doc, labels) in USAGE_COUNTERS.items():
            family = self._family(CounterMetricFamily, name, doc, labels)
            for values, n in self.totals.counts[name].items():
                family.add_metric([*place, *values], n)
            families.append(family)
        peers = self._family(GaugeMetricFamily, "peers", PEERS_HELP, ("workspace", "role"))
        for (label, role), n in peers_online(board).items():
            peers.add_metric([*place, label, role], n)
        round_trips = self._family(HistogramMetricFamily, ROUND_TRIPS, ROUND_TRIPS_HELP, ("workspace", "op"))
        for (workspace, op), h in board.latency.items():
            round_trips.add_metric([*place, workspace, op_name(op)], h.cumulative(), h.sum)
        refusals = self._family(CounterMetricFamily, "refusals", REFUSALS_HELP, ("workspace", "code"))
        for (workspace, code), n in board.refusals.items():
            refusals.add_metric([*place, workspace, code], n)
        quantiles = self._family(
            GaugeMetricFamily, "simulator_step_seconds",
            "Step round trip of each simulator online, p50 and p99 over the last minute.",
            ("workspace", "simulator", "quantile"),
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
        return iter((*families, peers, round_trips, refusals, quantiles))


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

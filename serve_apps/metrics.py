"""The relay's counters as Prometheus metrics, through Ray's metrics pipeline.

Ray exports application metrics from every node's metrics agent (Prometheus
format, prefixed ``ray_``), next to Ray's and Serve's own; point Prometheus
at the nodes as Ray's docs describe. Each replica adds what it metered in the
last second, so the totals are exact across replicas and regions. The names
and labels are the embedded relay's ``/metrics`` ones (``remoterl_ray.relay.metrics``)
with the prefix, so one Grafana dashboard (``serve_apps/grafana/``) reads both.

Round trips are exported as a histogram's series (``_bucket`` with ``le``,
``_sum``, ``_count``) holding each replica's cumulative counts, set once a
second from the switchboard's histogram: exact, and a few calls per second.
Ray's own ``Histogram`` takes one call per sample (about 6 µs each, on the
replica's event loop), so it is not used; PromQL (``rate``,
``histogram_quantile``) and Grafana's heatmaps read these series the same way.
Per-simulator quantiles are on the dashboard only (simulators come and go; Ray
would keep each one's series for good).
"""

from __future__ import annotations

from ray.util import metrics

from remoterl_ray.accounts.store import UsageDelta
from remoterl_ray.relay.metrics import (
    PEERS_HELP,
    PREFIX,
    REFUSALS_HELP,
    ROUND_TRIPS,
    ROUND_TRIPS_HELP,
    USAGE_COUNTERS,
    op_name,
    peers_online,
    usage_increments,
)
from remoterl_ray.relay.switchboard import Switchboard


class RelayMetrics:
    def __init__(self, region: str, replica: str) -> None:
        self._tags = {"region": region, "replica": replica}
        place = ("region", "replica")
        self.usage = {
            name: metrics.Counter(PREFIX + name, doc, (*place, *labels)) for name, (doc, labels) in USAGE_COUNTERS.items()
        }
        self._usage_labels = {name: labels for name, (_, labels) in USAGE_COUNTERS.items()}
        self.peers = metrics.Gauge(PREFIX + "peers", PEERS_HELP, (*place, "workspace", "role"))
        round_trips = PREFIX + ROUND_TRIPS
        keys = (*place, "workspace", "op")
        self.round_trip_buckets = metrics.Gauge(f"{round_trips}_bucket", f"{ROUND_TRIPS_HELP} Samples <= le.", (*keys, "le"))
        self.round_trip_sum = metrics.Gauge(f"{round_trips}_sum", f"{ROUND_TRIPS_HELP} Their sum.", keys)
        self.round_trip_count = metrics.Gauge(f"{round_trips}_count", f"{ROUND_TRIPS_HELP} Samples.", keys)
        self.refusals = metrics.Counter(PREFIX + "refusals", REFUSALS_HELP, (*place, "workspace", "code"))
        self._online: set[tuple[str, str]] = set()
        self._counted: dict[tuple[str, int], int] = {}  # each round-trip histogram's samples when last set
        self._refused: dict[tuple[str, str], int] = {}

    def observe(self, deltas: list[UsageDelta], board: Switchboard) -> None:
        for name, values, amount in usage_increments(deltas, board):
            self.usage[name].inc(amount, {**self._tags, **dict(zip(self._usage_labels[name], values))})
        online = {key: n for key, n in peers_online(board).items() if n}
        for workspace, role in self._online - set(online):  # went to zero: say so, once
            self.peers.set(0, {**self._tags, "workspace": workspace, "role": role})
        for (workspace, role), count in online.items():
            self.peers.set(count, {**self._tags, "workspace": workspace, "role": role})
        self._online = set(online)
        self._observe_round_trips(board)
        for (workspace, code), n in list(board.refusals.items()):
            grew = n - self._refused.get((workspace, code), 0)
            if grew:
                self.refusals.inc(grew, {**self._tags, "workspace": workspace, "code": code})
                self._refused[(workspace, code)] = n

    def _observe_round_trips(self, board: Switchboard) -> None:
        for key, histogram in list(board.latency.items()):
            cumulative = histogram.cumulative()
            if self._counted.get(key) == cumulative[-1][1]:
                continue  # nothing new since the last second
            self._counted[key] = cumulative[-1][1]
            tags = {**self._tags, "workspace": key[0], "op": op_name(key[1])}
            for le, n in cumulative:
                self.round_trip_buckets.set(n, {**tags, "le": le})
            self.round_trip_sum.set(histogram.sum, tags)
            self.round_trip_count.set(cumulative[-1][1], tags)

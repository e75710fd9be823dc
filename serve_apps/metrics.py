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

from collections import Counter as Tally

from ray.util import metrics

from remoterl_ray.accounts.store import UsageDelta
from remoterl_ray.relay.metrics import op_name
from remoterl_ray.relay.switchboard import Switchboard



class RelayMetrics:
    def __init__(self, region: str, replica: str) -> None:
        self._tags = {"region": region, "replica": replica}
        keys = ("region", "replica", "workspace")
        self.bytes = metrics.Counter(
            "remoterl_relay_bytes", "Bytes through the relay, by direction (in: from peers).", (*keys, "direction")
        )
        self.steps = metrics.Counter("remoterl_relay_env_steps", "Env steps trainers took through the relay.", keys)
        self.seconds = metrics.Counter(
            "remoterl_relay_connection_seconds", "Connection time of trainers and simulators.", (*keys, "role")
        )
        self.peers = metrics.Gauge("remoterl_relay_peers", "Trainers and simulators online.", (*keys, "role"))
        about = "Request forwarded to a simulator until its answer is forwarded back (from headers)"
        round_trips = "remoterl_relay_round_trip_seconds"
        self.round_trip_buckets = metrics.Gauge(f"{round_trips}_bucket", f"{about}: samples <= le.", (*keys, "op", "le"))
        self.round_trip_sum = metrics.Gauge(f"{round_trips}_sum", f"{about}: their sum.", (*keys, "op"))
        self.round_trip_count = metrics.Gauge(f"{round_trips}_count", f"{about}: samples.", (*keys, "op"))
        self.refusals = metrics.Counter(
            "remoterl_relay_refusals", "Frames and hellos refused, by error code.", (*keys, "code")
        )
        self._online: set[tuple[str, str]] = set()
        self._counted: dict[tuple[str, int], int] = {}  # each round-trip histogram's samples when last set
        self._refused: dict[tuple[str, str], int] = {}

    def observe(self, deltas: list[UsageDelta], board: Switchboard) -> None:
        for d in deltas:
            tags = {**self._tags, "workspace": board.metric_workspace(d.workspace)}
            if d.bytes_in:
                self.bytes.inc(d.bytes_in, {**tags, "direction": "in"})
            if d.bytes_out:
                self.bytes.inc(d.bytes_out, {**tags, "direction": "out"})
            if d.steps and d.role == "trainer":
                self.steps.inc(d.steps, tags)
            if d.connection_seconds:
                self.seconds.inc(d.connection_seconds, {**tags, "role": d.role})
        online = Tally((board.metric_workspace(p.workspace), p.role) for p in board.peers())
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

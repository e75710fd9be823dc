"""The relay's counters as Prometheus metrics, through Ray's metrics pipeline.

Ray exports application metrics from every node's metrics agent (Prometheus
format, prefixed ``ray_``), next to Ray's and Serve's own; point Prometheus
at the nodes as Ray's docs describe. Each replica adds what it metered in the
last second, so the totals are exact across replicas and regions.
"""

from __future__ import annotations

from collections import Counter as Tally

from ray.util import metrics

from remoterl_ray.accounts.store import UsageDelta
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
        self._online: set[tuple[str, str]] = set()

    def observe(self, deltas: list[UsageDelta], board: Switchboard) -> None:
        for d in deltas:
            tags = {**self._tags, "workspace": d.workspace}
            if d.bytes_in:
                self.bytes.inc(d.bytes_in, {**tags, "direction": "in"})
            if d.bytes_out:
                self.bytes.inc(d.bytes_out, {**tags, "direction": "out"})
            if d.steps and d.role == "trainer":
                self.steps.inc(d.steps, tags)
            if d.connection_seconds:
                self.seconds.inc(d.connection_seconds, {**tags, "role": d.role})
        online = Tally((p.workspace, p.role) for p in board.peers())
        for workspace, role in self._online - set(online):  # went to zero: say so, once
            self.peers.set(0, {**self._tags, "workspace": workspace, "role": role})
        for (workspace, role), count in online.items():
            self.peers.set(count, {**self._tags, "workspace": workspace, "role": role})
        self._online = set(online)

"""Relay state that spans replicas and regions, gathered in one actor.

Every relay replica reports to the named actor ``RelayState`` once per
``sync_interval``: its region, its public endpoint, a per-workspace summary
and the full per-peer counters of its switchboard. The actor keeps the last
report of each live replica (a replica that stops reporting is dropped after
``STALE_AFTER`` seconds), answers each report with the region map, and tells
a replica which workspaces' idle peers should reconnect because the
workspace's newest connection in that region landed on another replica: the
newest connection shows where the ingress hash points now, and peers that
dial again land there too. "Newest" is judged by this actor's own clock
(when it first saw that peer), so node clocks need not agree.
The dashboard reads :meth:`RelayState.snapshot`.

:class:`RayDirectory` is the relay core's ``Directory`` backed by this actor.
It holds counters and connection status only, never a payload.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import ray

from remoterl_ray.protocol.messages import Region
from remoterl_ray.relay.switchboard import Switchboard

STATE_ACTOR = "remoterl-relay-state"
STATE_NAMESPACE = "remoterl"
STALE_AFTER = 10.0  # seconds without a report before a replica is forgotten
SYNC_TIMEOUT = 10.0  # a report the actor does not answer by then is skipped


@ray.remote(num_cpus=0, max_restarts=-1)
class RelayState:
    def __init__(self) -> None:
        self.replicas: dict[str, dict[str, Any]] = {}
        self.newest: dict[tuple[str, str], tuple[str, float]] = {}  # (replica, workspace) -> (peer, first seen)

    def report(
        self, replica: str, region: str, url: str | None, summary: dict[str, Any], stats: dict[str, Any]
    ) -> dict[str, Any]:
        now = time.time()
        self.replicas[replica] = {"region": region, "url": url, "summary": summary, "stats": stats, "seen": now}
        for name in [r for r, rep in self.replicas.items() if now - rep["seen"] > STALE_AFTER]:
            del self.replicas[name]
        for workspace, counts in summary.items():
            if self.newest.get((replica, workspace), ("",))[0] != counts["newest"]:
                self.newest[(replica, workspace)] = (counts["newest"], now)
        for key in [k for k in self.newest if k[0] not in self.replicas or k[1] not in self.replicas[k[0]]["summary"]]:
            del self.newest[key]
        return {"regions": self._regions(), "moves": self._moves_from(replica)}

    def _regions(self) -> dict[str, dict[str, Any]]:
        """Per region: its endpoint and the simulators online per workspace."""
        regions: dict[str, dict[str, Any]] = {}
        for rep in self.replicas.values():
            region = regions.setdefault(rep["region"], {"url": rep["url"], "simulators": {}})
            region["url"] = region["url"] or rep["url"]
            for workspace, counts in rep["summary"].items():
                region["simulators"][workspace] = region["simulators"].get(workspace, 0) + counts["simulators"]
        return regions

    def _moves_from(self, replica: str) -> list[str]:
        """Workspaces with idle peers here whose newest connection in this region is elsewhere."""
        region = self.replicas[replica]["region"]
        moves = []
        for workspace, counts in self.replicas[replica]["summary"].items():
            if not counts["idle"]:
                continue
            seen = [
                (self.newest[(name, workspace)][1], name)
                for name, rep in self.replicas.items()
                if rep["region"] == region and (name, workspace) in self.newest
            ]
            if max(seen)[1] != replica:
                moves.append(workspace)
        return moves

    def snapshot(self) -> dict[str, Any]:
        """Everything online, by region and replica: what the dashboard shows."""
        regions: dict[str, dict[str, Any]] = {}
        for name, rep in sorted(self.replicas.items()):
            region = regions.setdefault(rep["region"], {"url": rep["url"], "replicas": {}})
            region["replicas"][name] = {**rep["stats"], "seen": rep["seen"]}
        return {"regions": regions}


HEAD_NODE_RESOURCE = "node:__internal_head__"


def state_actor() -> Any:
    """The one shared state actor, created by whichever replica comes first.

    It lives on the head node, which is never scaled away: on a relay node it
    would keep that node busy, and Ray's autoscaler could never remove it.
    """
    return RelayState.options(
        name=STATE_ACTOR,
        namespace=STATE_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        resources={HEAD_NODE_RESOURCE: 0.001},
    ).remote()


def replica_url(scheme: str, host: str, port: int, root_path: str) -> str:
    """A replica's own (direct-ingress) WebSocket base URL. Clients that dialled
    ``wss://`` accept only a ``wss://`` one (they never move to cleartext)."""
    return f"{scheme}://{host}:{port}{root_path.rstrip('/')}"


class RayDirectory:
    """``Directory`` for a relay replica: publishes to and reads from ``RelayState``."""

    def __init__(
        self,
        *,
        region: str,
        url: str | None,
        replica: str,
        sync_interval: float,
        direct_host: str | None = None,
        direct_scheme: str = "ws",
    ) -> None:
        """``direct_host``: this node's address, when clients may dial the replica's
        own port (Serve's direct ingress, which HAProxy mode turns on).
        ``direct_scheme``: ``wss`` when that port speaks TLS (Serve's http_options)."""
        self.region = region
        self.url = url
        self.direct_host = direct_host
        self.direct_scheme = direct_scheme
        self.replica = replica
        self.sync_interval = sync_interval
        self._actor = state_actor()
        self._regions: dict[str, dict[str, Any]] = {}

    def regions(self) -> list[dict[str, Any]]:
        known = dict(self._regions)
        known.setdefault(self.region, {"url": self.url})
        return [{"name": name, "url": info["url"]} for name, info in sorted(known.items())]

    def regions_for(self, workspace: str, board: Switchboard) -> list[Region]:
        out = []
        for name, info in sorted(self._regions.items()):
            if name != self.region:
                out.append(Region(name=name, url=info["url"], simulators=info["simulators"].get(workspace, 0)))
        # Our own region: only simulators in this replica are reachable; others
        # of the workspace in this region are on their way here (see RelayState).
        out.insert(0, Region(name=self.region, url=None, simulators=board.simulator_count(workspace)))
        return out

    def direct_url(self, port: int | None, root_path: str) -> str | None:
        if self.direct_host is None or port is None:
            return None
        return replica_url(self.direct_scheme, self.direct_host, port, root_path)

    async def sync(self, board: Switchboard) -> list[str]:
        report = self._actor.report.remote(self.replica, self.region, self.url, board.summary(), board.stats())
        view = await asyncio.wait_for(report, SYNC_TIMEOUT)
        self._regions = view["regions"]
        return view["moves"]

    async def cluster_stats(self, board: Switchboard) -> dict[str, Any]:
        return await self._actor.snapshot.remote()

    async def close(self) -> None:
        return None

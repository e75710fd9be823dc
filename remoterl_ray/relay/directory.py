"""What one relay process knows about the others: regions and shared state.

The embedded relay is a region of its own and needs nothing more than
:class:`LocalDirectory`. Under Ray Serve, ``serve_apps/`` hands the app a
directory backed by one shared state actor; the relay core only sees this
interface, so it never imports Ray.

Every ``sync_interval`` seconds the app calls :meth:`Directory.sync` with its
switchboard. The directory publishes this replica's counters and answers with
the workspaces whose *idle* simulators should reconnect: under Serve's
consistent-hash routing a workspace's newest connections show where its
affinity points now (after replicas were added or removed), and idle
simulators elsewhere follow it there.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..protocol.messages import Region
from .switchboard import Switchboard


class Directory(Protocol):
    region: str
    sync_interval: float | None  # None: nothing to publish (one process)

    def regions(self) -> list[dict[str, Any]]:
        """Every region and its public endpoint (``/v1/regions``)."""

    def regions_for(self, workspace: str, board: Switchboard) -> list[Region]:
        """The regions, each with the number of ``workspace``'s simulators there."""

    def direct_url(self, port: int | None, root_path: str) -> str | None:
        """This process's own ``ws://`` address for clients to dial past the ingress, or None."""

    async def sync(self, board: Switchboard) -> list[str]:
        """Publish this relay's state; return workspaces to move away from here."""

    async def cluster_stats(self, board: Switchboard) -> dict[str, Any]:
        """Who is online across every replica and region (``/v1/cluster``)."""

    async def close(self) -> None: ...


class LocalDirectory:
    """One relay process: one region, reached through the URL in use."""

    sync_interval: float | None = None

    def __init__(self, region: str = "local") -> None:
        self.region = region

    def regions(self) -> list[dict[str, Any]]:
        return [{"name": self.region, "url": None}]

    def regions_for(self, workspace: str, board: Switchboard) -> list[Region]:
        return [Region(name=self.region, url=None, simulators=board.simulator_count(workspace))]

    def direct_url(self, port: int | None, root_path: str) -> str | None:
        return None  # clients already dial this process

    async def sync(self, board: Switchboard) -> list[str]:
        return []

    async def cluster_stats(self, board: Switchboard) -> dict[str, Any]:
        return {"regions": {self.region: {"url": None, "replicas": {"local": board.stats()}}}}

    async def close(self) -> None:
        return None

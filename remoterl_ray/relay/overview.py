"""What the dashboard shows each second, in a size that does not grow with the peers.

The cluster view (every replica's per-peer counters) can list thousands of
peers; the page gets aggregates of it by default: counts per region and
replica, per workspace totals and quota, steps/s over the last minutes, the
slowest simulators' step latency, and the busiest peers' rows (``PEER_ROWS``).
Naming a workspace (``focus``) swaps the rows for that workspace's, up to
``FOCUS_ROWS``. Every list is capped, so an event stays under ``MAX_EVENT_BYTES``
for any number of peers (tests check this with 1,000).

A simulator is *slow* when its step p50 is more than ``SLOW_FACTOR`` times its
workspace's median (the lower median, so one fast and one slow simulator are
told apart) and at least ``SLOW_MARGIN_MS`` above it.
"""

from __future__ import annotations

import heapq
import statistics
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

PEER_ROWS = 50  # peer rows without a focus: the busiest first
FOCUS_ROWS = 200  # rows of the focused workspace
LATENCY_ROWS = 24  # simulators in the latency chart: the slowest first
TREND_WORKSPACES = 8  # workspace lines in the throughput chart: the busiest
TREND_SIMULATORS = 6  # simulator lines: the busiest (of the focus, if any)
TREND_POINTS = 180  # seconds of history at one sample a second
TREND_KEPT = 64  # simulators whose rate a sample keeps: the busiest (6 are drawn)
NAME_CHARS = 64  # of a peer's name (clients choose them; the page shows fewer)
WORKSPACE_ROWS = 100  # workspaces listed: those with peers online first, then by traffic
MAX_EVENT_BYTES = 64_000  # what the caps above keep an event under (tested at 1,000 peers)
SLOW_FACTOR = 2.0
SLOW_MARGIN_MS = 1.0


@dataclass(frozen=True, slots=True)
class PeerRow:
    region: str
    replica: str
    workspace: str
    role: str
    stats: dict[str, Any]

    @property
    def p50(self) -> float | None:
        latency = self.stats.get("latency")
        return latency["p50_ms"] if latency else None


def peers_of(cluster: dict[str, Any]) -> Iterator[PeerRow]:
    for region, info in cluster.get("regions", {}).items():
        for replica, stats in info.get("replicas", {}).items():
            for workspace, peers in stats.get("workspaces", {}).items():
                for role in ("trainer", "simulator"):
                    for p in peers.get(role + "s", []):
                        yield PeerRow(region, replica, workspace, role, p)


class Trends:
    """Steps/s per workspace and per busy simulator, one sample a second, ``TREND_POINTS`` kept.

    Sampled while someone watches the dashboard (each snapshot offers a sample;
    at most one a second is taken): times are sent along, so gaps show as gaps."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, dict[str, float], dict[str, float]]] = deque(maxlen=TREND_POINTS)

    def offer(self, at: float, rows: list[PeerRow]) -> None:
        if self.samples and at - self.samples[-1][0] < 0.9:
            return
        workspaces: dict[str, float] = {}
        simulators: list[tuple[float, str]] = []
        for r in rows:
            rate = r.stats.get("steps_per_s", 0.0)
            if r.role == "trainer":
                workspaces[r.workspace] = workspaces.get(r.workspace, 0.0) + rate
            elif rate:  # idle simulators take no room
                simulators.append((rate, r.stats["id"]))
        busiest = heapq.nlargest(TREND_KEPT, simulators)
        self.samples.append((at, workspaces, {peer: rate for rate, peer in busiest}))

    def view(self, workspaces: list[str], simulators: list[PeerRow]) -> dict[str, Any]:
        samples = list(self.samples)
        lines = {w: [round(s[1].get(w, 0.0), 1) for s in samples] for w in workspaces}
        return {
            "times": [round(t, 1) for t, _, _ in samples],
            "workspaces": {w: values for w, values in lines.items() if any(values)},  # idle ones draw no line
            "simulators": [
                {
                    "id": r.stats["id"],
                    "name": r.stats.get("name", "")[:NAME_CHARS],
                    "workspace": r.workspace,
                    "values": [round(s[2].get(r.stats["id"], 0.0), 1) for s in samples],
                }
                for r in simulators
            ],
        }


def mark_slow(rows: list[PeerRow]) -> tuple[dict[str, float], set[str]]:
    """Each workspace's median simulator p50 (ms), and the ids of its slow simulators."""
    by_workspace: dict[str, list[PeerRow]] = {}
    for r in rows:
        if r.role == "simulator" and r.p50 is not None:
            by_workspace.setdefault(r.workspace, []).append(r)
    medians, slow = {}, set()
    for workspace, sims in by_workspace.items():
        median = medians[workspace] = statistics.median_low(r.p50 for r in sims)  # type: ignore[misc]
        slow.update(
            r.stats["id"] for r in sims
            if r.p50 > SLOW_FACTOR * median and r.p50 - median >= SLOW_MARGIN_MS  # type: ignore[operator]
        )  # fmt: skip
    return medians, slow


def _row(r: PeerRow, slow: set[str]) -> dict[str, Any]:
    s = r.stats
    return {
        "id": s["id"], "name": s.get("name", "")[:NAME_CHARS], "region": r.region, "replica": r.replica,
        "workspace": r.workspace, "role": r.role, "connected_at": s.get("connected_at"),
        "bytes_in": s.get("bytes_in", 0), "bytes_out": s.get("bytes_out", 0), "env_steps": s.get("env_steps", 0),
        "steps_per_s": s.get("steps_per_s", 0.0), "resumes": s.get("resumes", 0),
        "latency": s.get("latency"), "slow": s["id"] in slow,
    }  # fmt: skip


def overview(
    cluster: dict[str, Any], accounts: dict[str, dict[str, Any]], trends: Trends, at: float, focus: str | None
) -> dict[str, Any]:
    """The dashboard's event: bounded aggregates of ``cluster`` plus each workspace's account figures."""
    rows = list(peers_of(cluster))
    trends.offer(at, rows)
    medians, slow = mark_slow(rows)
    places = {  # every replica, with peers or not
        (region, replica): {"region": region, "replica": replica, "trainers": 0, "simulators": 0}
        for region, info in cluster.get("regions", {}).items()
        for replica in info.get("replicas", {})
    }
    workspaces: dict[str, dict[str, Any]] = {
        name: {**account, "trainers": 0, "simulators": 0, "steps_per_s": 0.0} for name, account in accounts.items()
    }
    for r in rows:
        places[(r.region, r.replica)][r.role + "s"] += 1
        w = workspaces.setdefault(r.workspace, {"plan": None, "used_bytes": 0, "included_bytes": None,
                                                "blocked": False, "trainers": 0, "simulators": 0,
                                                "steps_per_s": 0.0})  # fmt: skip
        w[r.role + "s"] += 1
        if r.role == "trainer":
            w["steps_per_s"] += r.stats.get("steps_per_s", 0.0)
    for name, w in workspaces.items():
        w["steps_per_s"] = round(w["steps_per_s"], 1)
        w["median_p50_ms"] = medians.get(name)
    listed = sorted(workspaces, key=lambda n: (-(workspaces[n]["trainers"] + workspaces[n]["simulators"]),
                                               -workspaces[n]["used_bytes"], n))[:WORKSPACE_ROWS]  # fmt: skip
    if focus is not None and focus not in workspaces:
        focus = None
    shown = [r for r in rows if r.workspace == focus] if focus else rows
    busiest = sorted(shown, key=lambda r: (-r.stats.get("steps_per_s", 0.0), r.stats["id"]))
    timed = sorted((r for r in shown if r.p50 is not None), key=lambda r: -r.p50)  # type: ignore[operator]
    lines = sorted(workspaces, key=lambda n: -workspaces[n]["steps_per_s"])[:TREND_WORKSPACES]
    return {
        "at": at,
        "focus": focus,
        "totals": {
            "trainers": sum(p["trainers"] for p in places.values()),
            "simulators": sum(p["simulators"] for p in places.values()),
            "steps_per_s": round(sum(w["steps_per_s"] for w in workspaces.values()), 1),
            "workspaces": len(workspaces),
        },
        "places": sorted(places.values(), key=lambda p: (p["region"], p["replica"])),
        "workspaces": {n: workspaces[n] for n in sorted(listed)},
        "trend": trends.view(
            lines, [r for r in busiest if r.role == "simulator" and r.stats.get("steps_per_s")][:TREND_SIMULATORS]
        ),
        "latency": [_row(r, slow) for r in timed[:LATENCY_ROWS]],
        "peers": [_row(r, slow) for r in busiest[: FOCUS_ROWS if focus else PEER_ROWS]],
        "peers_total": len(shown),
    }

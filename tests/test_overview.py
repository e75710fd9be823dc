"""The dashboard's event from a cluster view: caps, the slow rule, hostile names, trends."""

from __future__ import annotations

import json

from remoterl_ray.relay.overview import (
    LATENCY_ROWS,
    MAX_EVENT_BYTES,
    NAME_CHARS,
    PEER_ROWS,
    TREND_KEPT,
    Trends,
    overview,
)


def sim(i: int, p50: float | None, rate: float = 0.0, name: str = "") -> dict:
    latency = None if p50 is None else {"p50_ms": p50, "p99_ms": p50 * 1.5, "n": 100}
    return {"id": f"s-{i}", "name": name or f"sim-{i}", "connected_at": 0, "steps_per_s": rate, "latency": latency}


def cluster(workspaces: dict[str, list[dict]], trainers: dict[str, float] | None = None) -> dict:
    stats = {
        w: {"trainers": [{"id": f"t-{w}", "name": "t", "steps_per_s": rate}] if rate else [], "simulators": []}
        for w, rate in (trainers or {}).items()
    }
    for w, sims in workspaces.items():
        stats.setdefault(w, {"trainers": []})["simulators"] = sims
    return {"regions": {"r": {"url": None, "replicas": {"a": {"workspaces": stats}, "idle": {"workspaces": {}}}}}}


def test_a_simulator_well_above_its_workspace_median_is_slow_and_only_that_one():
    view = overview(cluster({"w": [sim(1, 0.8), sim(2, 0.9), sim(3, 60.0)], "v": [sim(4, 60.0)]}), {}, Trends(), 1.0, None)
    slow = {r["id"] for r in view["latency"] if r["slow"]}
    assert slow == {"s-3"}  # s-4 is alone in its workspace: its own median
    assert view["latency"][0]["id"] in {"s-3", "s-4"}  # slowest first
    assert view["workspaces"]["w"]["median_p50_ms"] == 0.9
    # One fast and one slow: the lower median tells them apart.
    pair = overview(cluster({"w": [sim(1, 1.0), sim(2, 50.0)]}), {}, Trends(), 1.0, None)
    assert [r["id"] for r in pair["latency"] if r["slow"]] == ["s-2"]
    # Within the margin it is not slow, however the ratio looks.
    tiny = overview(cluster({"w": [sim(1, 0.1), sim(2, 0.5)]}), {}, Trends(), 1.0, None)
    assert not any(r["slow"] for r in tiny["latency"])


def test_every_replica_is_listed_and_peers_are_counted_per_place():
    view = overview(cluster({"w": [sim(1, None), sim(2, None)]}, {"w": 5.0}), {}, Trends(), 1.0, None)
    assert view["places"] == [
        {"region": "r", "replica": "a", "trainers": 1, "simulators": 2},
        {"region": "r", "replica": "idle", "trainers": 0, "simulators": 0},
    ]
    assert view["totals"] == {"trainers": 1, "simulators": 2, "steps_per_s": 5.0, "workspaces": 1}


def test_hostile_names_and_crowds_keep_the_event_bounded():
    """5,000 simulators named with 200 astral characters each, all timed, all stepping."""
    name = "\U0001f600" * 200
    crowd = [sim(i, 1.0 + i % 7, rate=1.0 + i, name=name) for i in range(5000)]
    trends = Trends()
    for t in range(5):
        view = overview(cluster({"w": crowd}, {"w": 10.0}), {}, trends, float(t), None)
    assert len(view["peers"]) == PEER_ROWS and len(view["latency"]) == LATENCY_ROWS
    assert all(len(r["name"]) == NAME_CHARS for r in view["peers"] + view["latency"])
    assert all(len(sample[2]) == TREND_KEPT for sample in trends.samples)
    event = json.dumps({**view, "audit": []}, separators=(",", ":"), ensure_ascii=False).encode()
    assert len(event) < MAX_EVENT_BYTES, len(event)
    focused = overview(cluster({"w": crowd}), {}, trends, 6.0, "w")
    assert focused["focus"] == "w" and focused["peers_total"] == 5000
    unknown = overview(cluster({"w": crowd}), {}, trends, 7.0, "no-such-workspace")
    assert unknown["focus"] is None

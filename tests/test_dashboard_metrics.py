"""What the relay measures from headers alone, as the dashboard and Prometheus see it.

A real relay (accounts store, admin token), real simulator processes, a real
trainer: a simulator whose env sleeps 50 ms a step shows a step p50 of 50 ms
(within the margin below) in the dashboard's data and in ``/metrics``; every
metric the Grafana dashboard queries is in a live scrape; 1,000 idle
simulators leave the dashboard's event small.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import remoterl_ray
from attackers import websocket, welcomed
from conftest import TEST_ENVS_MODULE, idle_peers, sim_env
from remoterl_ray.local import LocalRelay, start_relay, start_simulator
from remoterl_ray.protocol.frames import Kind, Op, pack
from remoterl_ray.protocol.messages import Hello
from remoterl_ray.relay.overview import FOCUS_ROWS, MAX_EVENT_BYTES, PEER_ROWS
from remoterl_ray.relay.switchboard import MAX_METRIC_WORKSPACES, OTHER_WORKSPACES
from test_accounts import create_key, operator_relay, wait_until
from test_grafana_dashboard import dashboard, queried_metrics

TOKEN = "metrics-admin-token-0123456789"
SLEEP = 0.05  # each step of the sleepy simulator's env
# A round trip includes the sleep, never less; what the relay, simulator and loopback add,
# and the window's bucket width (about 2 %), must stay within this.
LOW, HIGH = SLEEP * 0.97, SLEEP * 1.25
STEPS = 40


@pytest.fixture(scope="module")
def relay(tmp_path_factory) -> Iterator[tuple[LocalRelay, Path]]:
    relay, db = operator_relay(tmp_path_factory.mktemp("metrics"), "mo", TOKEN, "warmup")
    yield relay, db
    relay.stop()


def admin(relay: LocalRelay) -> httpx.Client:
    return httpx.Client(base_url=relay.http_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=20.0)


def scrape(relay: LocalRelay) -> str:
    with admin(relay) as client:
        reply = client.get("/metrics")
    assert reply.status_code == 200, reply.text
    return reply.text


def samples(text: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """``name``'s samples whose labels include ``labels``."""
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def test_a_sleeping_simulator_shows_its_step_time_on_the_page_and_in_metrics(relay, trainer_cleanup):
    relay, db = relay
    _, key = create_key(db, "sleepy", "free")
    sim = start_simulator(relay.url, key, allow=(TEST_ENVS_MODULE,), env=sim_env(), extra_args=("--name", "dozy"))
    try:
        [online] = relay.wait_for(None, "simulator", 1, workspace="sleepy")
        assert remoterl_ray.init(key, relay_url=relay.url, simulator_wait=10.0)
        env = gym.make(f"{TEST_ENVS_MODULE}:Counter-v0", delay=SLEEP)
        env.reset(seed=0)
        for _ in range(STEPS):
            env.step(0)

        # The page's data: the latency chart's row and the peer row of that simulator.
        with admin(relay) as client:
            snap = client.get("/dashboard/api/snapshot", params={"focus": "sleepy"}).json()
        [row] = [r for r in snap["latency"] if r["id"] == online["id"]]
        assert row["name"] == "dozy" and row["latency"]["n"] >= STEPS and not row["slow"]
        assert LOW * 1000 <= row["latency"]["p50_ms"] <= HIGH * 1000, row
        assert row["latency"]["p50_ms"] <= row["latency"]["p99_ms"]
        [peer] = [p for p in snap["peers"] if p["id"] == online["id"]]
        assert peer["latency"] == row["latency"]
        assert snap["workspaces"]["sleepy"]["median_p50_ms"] == row["latency"]["p50_ms"]
        assert LOW * 1000 <= relay.stats()["workspaces"]["sleepy"]["simulators"][0]["latency"]["p50_ms"] <= HIGH * 1000
        [channel_latency] = relay.stats()["workspaces"]["sleepy"]["simulators"][0]["channel_latency"].values()
        assert LOW * 1000 <= channel_latency["p50_ms"] <= HIGH * 1000

        # Prometheus: the simulator's p50, and the step histogram's median bucket.
        text = scrape(relay)
        [(_, p50)] = samples(text, "remoterl_relay_simulator_step_seconds", simulator=online["id"], quantile="0.5")
        assert LOW <= p50 <= HIGH
        buckets = {
            labels["le"]: value
            for labels, value in samples(text, "remoterl_relay_round_trip_seconds_bucket", workspace="sleepy", op="step")
        }
        total = buckets["+Inf"]
        assert total >= STEPS
        assert buckets["0.05"] < total / 2 <= buckets["0.075"], buckets  # the median is in (50 ms, 75 ms]
        [(_, made)] = samples(text, "remoterl_relay_round_trip_seconds_count", workspace="sleepy", op="make")
        assert made >= 1  # every kind of request is timed, by op
        counted = lambda: [v for _, v in samples(scrape(relay), "remoterl_relay_env_steps_total", workspace="sleepy")]
        wait_until(lambda: counted() == [STEPS], 10.0, "every step counted within a flush")
    finally:
        remoterl_ray.shutdown()
        sim.stop()


def test_every_metric_the_grafana_dashboard_queries_is_exported(relay, trainer_cleanup):
    relay, db = relay
    _, key = create_key(db, "graphs", "free")
    sim = start_simulator(relay.url, key, allow=(TEST_ENVS_MODULE,), env=sim_env())
    try:
        relay.wait_for(None, "simulator", 1, workspace="graphs")
        assert remoterl_ray.init(key, relay_url=relay.url, simulator_wait=10.0)
        env = gym.make(f"{TEST_ENVS_MODULE}:Counter-v0")
        env.reset(seed=0)
        for _ in range(5):
            env.step(1)
        with websocket(relay, "127.0.0.3") as ws:  # a hello the relay refuses: counted by code
            ws.send(b"\x00 not a hello")
            ws.recv(timeout=10)
        wait_until(lambda: samples(scrape(relay), "remoterl_relay_bytes_total", workspace="graphs"), 10.0, "a flush")
        text = scrape(relay)
        exported = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
        exported |= {name.removesuffix(suffix) for name in exported for suffix in ("_bucket", "_sum", "_count")}
        wanted = queried_metrics(dashboard(), "")
        assert wanted and wanted <= exported, sorted(wanted - exported)
        assert samples(text, "remoterl_relay_refusals_total", workspace="", code="bad_hello")
    finally:
        remoterl_ray.shutdown()
        sim.stop()


def test_a_thousand_idle_simulators_keep_the_event_small(relay):
    relay, db = relay
    _, key = create_key(db, "crowd", "free")
    with idle_peers(relay.url, [key], 1000, timeout=240) as ready:
        assert ready[0].startswith("ready 1000"), ready
        with admin(relay) as client:
            with client.stream("GET", "/dashboard/events") as events:
                data = next(line for line in events.iter_lines() if line.startswith("data: ") and '"at"' in line)
            focused = client.get("/dashboard/api/snapshot", params={"focus": "crowd"}).json()
    event = json.loads(data.removeprefix("data: "))
    assert event["totals"]["simulators"] >= 1000 and event["peers_total"] >= 1000
    assert len(event["peers"]) == PEER_ROWS and len(data) < MAX_EVENT_BYTES, len(data)
    assert focused["focus"] == "crowd" and len(focused["peers"]) == FOCUS_ROWS
    assert {p["workspace"] for p in focused["peers"]} == {"crowd"}


def test_a_key_farm_in_open_mode_cannot_grow_the_metrics():
    """Open mode makes a workspace per key: 300 keys, each sending a frame the relay
    refuses, leave MAX_METRIC_WORKSPACES labels of their own and one for the rest."""
    relay = start_relay(open_mode=True, admin_token=TOKEN)
    try:
        for i in range(MAX_METRIC_WORKSPACES + 44):
            ws, _ = welcomed(relay, Hello(role="trainer", api_key=f"farm-key-{i:04d}-0123456789"), "127.0.0.4")
            with ws:
                ws.send(pack(Kind.REQUEST, Op.STEP, 999_999, 1))  # no such channel: refused, counted
                ws.recv(timeout=10)
        text = scrape(relay)
        refused = samples(text, "remoterl_relay_refusals_total", code="unknown_channel")
        labels = {labels["workspace"] for labels, _ in refused}
        assert len(labels) == MAX_METRIC_WORKSPACES + 1 and OTHER_WORKSPACES in labels
        assert sum(n for _, n in refused) == MAX_METRIC_WORKSPACES + 44  # every refusal counted
    finally:
        relay.stop()


def test_the_dashboard_refuses_an_oversized_focus(relay):
    relay, _ = relay
    with admin(relay) as client:
        assert client.get("/dashboard/api/snapshot", params={"focus": "w" * 201}).status_code == 422
        assert client.get("/dashboard/events", params={"focus": "w" * 201}).status_code == 422

"""The Grafana dashboard (``serve_apps/grafana/remoterl-relay.json``) without Grafana or a relay.

It must load, every panel must query something, every metric name must go
through the ``prefix`` variable (``ray_`` under Serve, empty for the embedded
relay), every variable a query uses must be defined, and the panels must
cover throughput, traffic, round trips, peers and refusals.

:func:`dashboard` and :func:`queried_metrics` are for tests that hold the
dashboard against a running relay's scrape as well.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parents[1] / "serve_apps" / "grafana" / "remoterl-relay.json"
PREFIX_VAR = "${prefix}"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Variables Grafana defines itself.
BUILT_INS = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms", "__all"}
FAMILIES = {
    "remoterl_relay_env_steps_total",  # throughput
    "remoterl_relay_bytes_total",  # traffic
    "remoterl_relay_round_trip_seconds",  # the latency histogram
    "remoterl_relay_peers",
    "remoterl_relay_refusals_total",
}
NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
# $name, ${name}, ${name:format}, [[name]]
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def dashboard() -> dict[str, Any]:
    """The dashboard as Grafana imports it."""
    return json.loads(DASHBOARD.read_text())


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def exprs(board: dict[str, Any]) -> list[str]:
    """The PromQL of every panel target."""
    return [t["expr"] for p in panels(board) for t in p.get("targets", []) if t.get("expr")]


def variable_queries(board: dict[str, Any]) -> list[str]:
    """The PromQL of the query variables (``label_values(...)``)."""
    out = []
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            out.append(query["query"] if isinstance(query, dict) else query)
    return out


def queried_metrics(board: dict[str, Any], prefix: str) -> set[str]:
    """The metric names the panels query once ``${prefix}`` is ``prefix``: histogram
    series (``_bucket``, ``_sum``, ``_count``) as their family's name, ``_total`` kept."""
    out = set()
    for expr in exprs(board):
        for name in NAME.findall(expr.replace(PREFIX_VAR, prefix)):
            if "remoterl_relay_" not in name:
                continue
            for suffix in HISTOGRAM_SUFFIXES:
                if name.endswith(suffix):
                    name = name[: -len(suffix)]
                    break
            out.add(name)
    return out


def test_the_dashboard_is_json_grafana_imports():
    board = dashboard()
    assert board["title"] and board["uid"]
    assert 36 <= board["schemaVersion"] <= 41
    assert board["id"] is None  # an import makes its own
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(board):
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, f"{panel['title']}: wider than the grid"


def test_every_panel_queries_something():
    for panel in panels(dashboard()):
        assert panel["type"] != "row", "a row has no query; keep the panels at the top level"
        assert any(t.get("expr", "").strip() for t in panel.get("targets", [])), f"{panel['title']}: no query"


def test_every_metric_name_goes_through_the_prefix_variable():
    board = dashboard()
    for expr in exprs(board) + variable_queries(board):
        bare = re.findall(r"(?<!\$\{prefix\})remoterl_relay_", expr)
        assert not bare, f"a metric name without ${{prefix}} in front: {expr}"
        assert "remoterl_relay_" in expr, f"not a relay metric: {expr}"


def test_the_variables_queries_use_are_defined():
    board = dashboard()
    templating = {var["name"]: var for var in board["templating"]["list"]}
    for expr in exprs(board) + variable_queries(board):
        for match in VARIABLE.finditer(expr):
            name = next(group for group in match.groups() if group)
            assert name in templating or name in BUILT_INS, f"${name} is not a template variable: {expr}"
    assert templating["datasource"]["type"] == "datasource"
    assert templating["datasource"]["query"] == "prometheus"
    prefix = templating["prefix"]
    assert prefix["type"] == "custom"
    assert prefix["current"]["value"] == "ray_"
    assert [o["value"] for o in prefix["options"]] == ["ray_", ""]
    # Grafana makes a custom variable's options from its query: comma-separated, each trimmed.
    assert [v.strip() for v in prefix["query"].split(",")] == ["ray_", ""]
    for name in ("region", "workspace"):
        var = templating[name]
        assert var["type"] == "query" and var["includeAll"] and var["multi"], name
        assert var["datasource"]["uid"] == "${datasource}"


def test_every_query_reads_the_datasource_variable():
    for panel in panels(dashboard()):
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_the_panels_cover_throughput_traffic_latency_peers_and_refusals():
    board = dashboard()
    queried = queried_metrics(board, "")
    assert FAMILIES <= queried, f"not on the dashboard: {sorted(FAMILIES - queried)}"
    # Not exported under Serve: a panel of it would be empty there.
    assert "remoterl_relay_simulator_step_seconds" not in queried
    assert queried_metrics(board, "ray_") == {f"ray_{name}" for name in queried}
    heatmaps = [p for p in panels(board) if p["type"] == "heatmap"]
    assert heatmaps and all(t.get("format") == "heatmap" for p in heatmaps for t in p["targets"])
    assert all("round_trip_seconds_bucket" in t["expr"] for p in heatmaps for t in p["targets"])


def test_the_embedded_relay_exports_every_name_the_dashboard_queries():
    """Against the embedded relay's collector on an empty switchboard: every family is
    described (``# TYPE``) even with no sample yet."""
    from remoterl_ray.relay.metrics import RelayCollector, RelayTotals, scrape
    from remoterl_ray.relay.switchboard import Switchboard

    text = asyncio.run(scrape(RelayCollector(Switchboard(), RelayTotals(), "local"))).decode()
    exported = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    missing = queried_metrics(dashboard(), "") - exported
    assert not missing, f"queried but not exported: {sorted(missing)} (exported: {sorted(exported)})"

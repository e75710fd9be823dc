"""Regions scale with their connections: Serve adds relay replicas, Ray's autoscaler adds nodes.

Runs on ``ray.cluster_utils.AutoscalingCluster``: Ray's fake multi-node
provider starts and stops real raylet processes on this machine as if they
were cloud instances of the node type ``relay-edge`` (custom resource
``region-edge``). Connections are real simulator hellos over WebSockets.
The 2.60 wheel lacks the fake provider's base ``example.yaml``, which both
``AutoscalingCluster`` and the autoscaler's monitor read for defaults: the
fixture builds the config here in full and writes that file (only if it is
missing, removing it again afterwards).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import idle_peers, new_key, stop_serve_and_ray
from remoterl_ray.local import free_port

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

TARGET_CONNECTIONS = 4  # open WebSockets per replica before Serve adds one


EDGE_NODE = {"resources": {"CPU": 1, "region-edge": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2}


def fake_cluster_config(head_resources: dict[str, Any], worker_node_types: dict[str, Any]) -> dict[str, Any]:
    """A whole fake_multinode cluster config (the wheel has no base file to start from)."""
    empty_lists = (
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
        "cluster_synced_files",
        "rsync_exclude",
        "rsync_filter",
    )
    return {
        "cluster_name": "remoterl-autoscaling-test",
        "max_workers": 2,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "launch_multiple": True,  # autoscaler v2
            "head_node_id": ray.cluster_utils.FAKE_HEAD_NODE_ID,
        },
        "available_node_types": {
            **worker_node_types,
            "ray.head.default": {"resources": dict(head_resources), "node_config": {}, "max_workers": 0},
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.1,  # an idle node goes after 6 s
        "docker": {},
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
        **{key: [] for key in empty_lists},
    }


@pytest.fixture(scope="module")
def autoscaling_cluster() -> Iterator[int]:
    from ray.cluster_utils import AutoscalingCluster

    class FakeRegionCluster(AutoscalingCluster):
        def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs):  # type: ignore[no-untyped-def]
            return fake_cluster_config(head_resources, worker_node_types)

    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")  # `ray` CLI
    defaults = Path(ray.__file__).parent / "autoscaler" / "_private" / "fake_multi_node" / "example.yaml"
    wrote_defaults = not defaults.exists()
    if wrote_defaults:
        defaults.write_text(yaml.safe_dump(fake_cluster_config({"CPU": 2}, {"relay-edge": EDGE_NODE})))
    cluster = FakeRegionCluster(
        head_resources={"CPU": 2}, worker_node_types={"relay-edge": EDGE_NODE}, autoscaler_v2=True
    )
    try:
        cluster.start()
        ray.init(address="auto", log_to_driver=False, configure_logging=False)
        port = free_port()
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        yield port
    finally:
        try:
            stop_serve_and_ray()
        finally:
            cluster.shutdown()
            if wrote_defaults:
                defaults.unlink()


def edge_nodes() -> list[str]:
    return [n["NodeID"] for n in ray.nodes() if n["Alive"] and "region-edge" in n["Resources"]]


def relay_replicas() -> list[dict[str, Any]]:
    details = serve.context._get_global_client().get_serve_details()
    app = details["applications"].get("relay-edge")
    if app is None:
        return []
    return [r for r in app["deployments"]["Relay"]["replicas"] if r["state"] == "RUNNING"]


def wait(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout}s: nodes {edge_nodes()}, replicas {len(relay_replicas())}")
        time.sleep(1)


def test_region_scales_out_and_back_with_its_connections(autoscaling_cluster: int) -> None:
    from serve_apps.relay import relay_app

    port = autoscaling_cluster
    keys = [new_key(f"edge{i}") for i in range(12)]
    app = relay_app(
        {"region": "edge", "api_keys": keys, "public_url": f"ws://127.0.0.1:{port}/edge"},
        ray_actor_options={"num_cpus": 0.6, "resources": {"region-edge": 0.001}},  # one replica per node
        autoscaling_config={
            "min_replicas": 1,
            "max_replicas": 2,
            "target_ongoing_requests": TARGET_CONNECTIONS,
            "upscale_delay_s": 1,
            "downscale_delay_s": 2,
            "metrics_interval_s": 0.5,
            "look_back_period_s": 2,
        },
    )
    serve.run(app, name="relay-edge", route_prefix="/edge")  # the first replica already needs an edge node
    assert len(edge_nodes()) == 1 and len(relay_replicas()) == 1
    first_node = relay_replicas()[0]["node_id"]

    # 12 simulators of 12 workspaces: three times the target of one replica.
    with idle_peers(f"ws://127.0.0.1:{port}/edge", keys) as ready:
        assert all(line.startswith("ready 1") for line in ready), ready
        wait("a second edge node and a relay replica on it", lambda: len(relay_replicas()) == 2, 120)
        nodes = {r["node_id"] for r in relay_replicas()}
        assert len(nodes) == 2 and first_node in nodes and nodes <= set(edge_nodes())
    wait("back to one replica", lambda: len(relay_replicas()) == 1, 120)
    wait("the idle edge node removed", lambda: len(edge_nodes()) == 1, 180)

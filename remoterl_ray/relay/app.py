"""Layer 3: the relay as an ASGI app (FastAPI), shared by the embedded relay
and the Ray Serve deployment.

Routes:
  ``/ws``          the WebSocket every trainer and simulator dials (``peer_driver.py``);
  ``/healthz``     liveness (simulators also time it to pick the nearest region);
  ``/v1/stats``    who is online here and their byte/step counters (no payloads);
  ``/v1/regions``  every region and its endpoint (discovery);
  ``/v1/route``    this process's own address, when clients may dial it directly;
  ``/v1/cluster``  the same counters gathered across replicas and regions;
  ``/metrics``     Prometheus text (``metrics.py``; off under Serve, where Ray exports them);
  ``/dashboard``   the operator dashboard (``dashboard.py``).

``/v1/stats``, ``/v1/cluster`` and ``/metrics`` need an admin token once the relay has one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, HTTPException, Request, Response

from ..protocol.frames import DEFAULT_MAX_FRAME
from ..protocol.messages import CAP_RECONNECT, Reconnect, control_frame
from ..accounts.plans import Prices
from .accounting import Accounting, AccountsBackend, UsageObserver
from .admin import AdminAuth
from .auth import StaticKeys
from .dashboard import AdminGate, dashboard_router
from .directory import Directory, LocalDirectory
from .http_errors import add_error_handlers
from .http_guard import HttpGuard
from .metrics import CONTENT_TYPE, RelayCollector, RelayTotals, scrape
from .peer_driver import PeerDriver
from .ratelimit import FailureLimiter
from .switchboard import Switchboard

log = logging.getLogger("remoterl.relay")


@dataclass
class RelayConfig:
    keys: StaticKeys = field(default_factory=StaticKeys)
    accounts: AccountsBackend | None = None  # account keys, usage, quotas, operator actions
    prices: Prices = field(default_factory=Prices)
    admin_tokens: dict[str, str] = field(default_factory=dict)  # operator -> SHA-256 digest of its token
    max_frame: int = DEFAULT_MAX_FRAME
    hello_timeout: float = 10.0
    max_protocol_errors: int = 100  # refused frames a connection may send at once (refilled per minute), then it is cut off
    max_channels_per_trainer: int = 4096  # open channels one trainer connection may hold
    local_stats: bool = False  # without an admin token, /v1/stats and /v1/cluster answer loopback clients
    accounts_interval: float = 1.0  # seconds between usage flushes (what a crash can lose at most)
    limiter: Callable[[], FailureLimiter] = FailureLimiter  # refused hellos (and, apart, admin tokens) per address
    observer: UsageObserver | None = None  # sees each second's counts (Ray metrics under Serve)
    metrics_endpoint: bool = True  # /metrics (Serve turns it off: Ray's agents export the replicas' metrics)
    directory: Directory = field(default_factory=LocalDirectory)


def create_app(config: RelayConfig) -> FastAPI:
    if not config.keys and config.accounts is None:
        raise ValueError("a relay needs API keys (an accounts store or --api-key), or open mode")
    board = Switchboard(max_channels_per_trainer=config.max_channels_per_trainer)
    directory = config.directory
    totals = RelayTotals()
    observers = [o for o in (config.observer, totals if config.metrics_endpoint else None) if o is not None]
    accounting = Accounting(config.keys, config.accounts, config.prices, config.limiter(), observers)
    admin = AdminAuth(config.admin_tokens)
    gate = AdminGate(admin, config.limiter(), local_stats=config.local_stats)

    async def account_forever(interval: float) -> None:
        """Flush usage and apply revocations, blocks, disconnects and quota notices."""
        while True:
            try:
                await accounting.sync(board)
            except Exception:  # the store may be busy or restarting; counts are kept for the next try
                log.warning("accounts sync failed", exc_info=True)
            await asyncio.sleep(interval)

    async def sync_forever(interval: float) -> None:
        """Publish our state; send idle simulators where their workspace now lives."""
        while True:
            try:
                for workspace in await directory.sync(board):
                    for peer in board.idle_peers(workspace):
                        if CAP_RECONNECT in peer.capabilities:
                            board.mark_moving(peer)
                            await peer.send(control_frame(Reconnect(reason="workspace moved to another replica")))
            except Exception:  # the shared state may be restarting; keep serving
                log.warning("relay state sync failed", exc_info=True)
            await asyncio.sleep(interval)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:  # blocks, revocations and the login secret hold from the first request on
            await accounting.refresh()
            if config.accounts is not None:
                admin.secret = await config.accounts.cookie_secret()  # one for every replica
        except Exception:
            log.warning("accounts store not reachable at start-up", exc_info=True)
        tasks = [asyncio.create_task(account_forever(config.accounts_interval))]
        if directory.sync_interval:
            tasks.append(asyncio.create_task(sync_forever(directory.sync_interval)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            try:
                await accounting.sync(board)  # a clean shutdown loses no counts
            except Exception:
                log.warning("final usage flush failed", exc_info=True)
            if config.accounts is not None:
                await config.accounts.close()
            await directory.close()

    app = FastAPI(title="remoterl relay", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    add_error_handlers(app)
    app.add_middleware(HttpGuard)
    app.state.switchboard = board
    app.state.relay_config = config

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        return {"ok": True}

    @app.get("/v1/stats")
    async def stats(request: Request) -> dict[str, object]:
        gate.operator(request, loopback_without_tokens=True)
        return board.stats(per_channel=True)

    @app.get("/v1/regions")
    async def regions() -> dict[str, object]:
        """``url`` null means "the URL you used"; simulators time each region's ``/healthz``."""
        return {"region": directory.region, "regions": directory.regions()}

    @app.get("/v1/route")
    async def route(request: Request) -> dict[str, object]:
        """Reached through the ingress with the affinity header: names this very process."""
        server = request.scope.get("server")
        port = server[1] if server else None
        return {"direct_url": directory.direct_url(port, request.scope.get("root_path", ""))}

    @app.get("/v1/cluster")
    async def cluster(request: Request) -> dict[str, object]:
        gate.operator(request, loopback_without_tokens=True)
        return await directory.cluster_stats(board)

    collector = RelayCollector(board, totals, directory.region)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        if not config.metrics_endpoint:
            raise HTTPException(404, "this relay's metrics are exported through Ray's metrics agents")
        gate.operator(request, loopback_without_tokens=True)
        return Response(await scrape(collector), media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})

    app.include_router(dashboard_router(board, accounting, gate, lambda: directory.cluster_stats(board)))

    app.websocket("/ws")(
        PeerDriver(board, accounting, directory, config.max_frame, config.max_protocol_errors, config.hello_timeout,
                   has_accounts=config.accounts is not None).serve
    )  # fmt: skip

    return app

"""Layer 3: the relay as an ASGI app (FastAPI), shared by the embedded relay
and the Ray Serve deployment.

Routes:
  ``/ws``          the WebSocket every trainer and simulator dials;
  ``/healthz``     liveness (simulators also time it to pick the nearest region);
  ``/v1/stats``    who is online here and their byte/step counters (no payloads);
  ``/v1/regions``  every region and its endpoint (discovery);
  ``/v1/route``    this process's own address, when clients may dial it directly;
  ``/v1/cluster``  the same counters gathered across replicas and regions;
  ``/dashboard``   the operator dashboard (``dashboard.py``).

``/v1/stats`` and ``/v1/cluster`` need an admin token once the relay has one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

from fastapi import FastAPI, Request, WebSocket
from starlette.websockets import WebSocketDisconnect

from ..rate_limited_log import RateLimitedLog
from ..protocol.errors import ErrorCode, FrameTooLargeError, ProtocolError, ProtocolVersionError, RemoteRLError
from ..protocol.frames import (
    DEFAULT_MAX_FRAME,
    HEADER,
    HEADER_SIZE,
    SUPPORTED_VERSIONS,
    VALID_OPS,
    Kind,
    payload_of,
    unpack_header,
)
from ..protocol.messages import (
    CAP_LOCATE,
    CAP_RECONNECT,
    Locate,
    Open,
    Reconnect,
    Regions,
    Release,
    Welcome,
    control_frame,
    error_frame,
    parse_hello,
    parse_peer_control,
)
from ..accounts.plans import Prices
from ..accounts.store import Identity
from .accounting import CLOSE_POLICY, Accounting, AccountsBackend, UsageObserver, close_reason
from .admin import AdminAuth
from .auth import StaticKeys
from .dashboard import AdminGate, dashboard_router, source_of
from .directory import Directory, LocalDirectory
from .http_errors import add_error_handlers
from .http_guard import HttpGuard
from .ratelimit import ErrorBudget, FailureLimiter
from .switchboard import Peer, Switchboard

log = logging.getLogger("remoterl.relay")
peer_log = RateLimitedLog(log)  # refused and broken connections: one short line each, rate-limited

# WebSocket close codes (RFC 6455 section 7.4.1).
CLOSE_PROTOCOL_ERROR = 1002


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
    directory: Directory = field(default_factory=LocalDirectory)


CONNECTION_EXTENSION = "remoterl.connection"
"""ASGI scope extension by which the embedded server (``server.py``) offers hooks
for one connection; other servers (Ray Serve's) do not, and the relay works
without it."""


class ServerConnection(Protocol):
    def authenticated(self) -> None:
        """The peer passed its hello: it may use the limits of an admitted peer."""


class _NoServerHooks:
    def authenticated(self) -> None:
        return None


def server_connection(ws: WebSocket) -> ServerConnection:
    hooks = ws.scope.get("extensions", {}).get(CONNECTION_EXTENSION)
    return hooks if hooks is not None else _NoServerHooks()


class _Refused(Exception):
    def __init__(self, error: RemoteRLError, close_code: int) -> None:
        self.error = error
        self.close_code = close_code


def create_app(config: RelayConfig) -> FastAPI:
    if not config.keys and config.accounts is None:
        raise ValueError("a relay needs API keys (an accounts store or --api-key), or open mode")
    board = Switchboard(max_channels_per_trainer=config.max_channels_per_trainer)
    directory = config.directory
    accounting = Accounting(config.keys, config.accounts, config.prices, config.limiter(), config.observer)
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
    peer_ids = itertools.count(1)
    instance = secrets.token_hex(3)

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        return {"ok": True}

    @app.get("/v1/stats")
    async def stats(request: Request) -> dict[str, object]:
        gate.operator(request, loopback_without_tokens=True)
        return board.stats()

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

    app.include_router(dashboard_router(board, accounting, gate, lambda: directory.cluster_stats(board)))

    async def send_bytes(ws: WebSocket, data: bytes) -> None:
        await ws.send({"type": "websocket.send", "bytes": data})

    async def greet(ws: WebSocket, source: str) -> tuple[Peer, Identity]:
        """Read and check the hello: rate limit first, then size and shape, then the key."""
        try:
            message = await asyncio.wait_for(ws.receive(), config.hello_timeout)
        except asyncio.TimeoutError:
            accounting.failed(source)
            raise _Refused(ProtocolError("no hello received in time", code=ErrorCode.BAD_HELLO), CLOSE_POLICY) from None
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        try:
            accounting.check_rate(source)  # a refused address is turned away before its hello is decoded
        except RemoteRLError as exc:
            raise _Refused(exc, CLOSE_POLICY) from None
        data = message.get("bytes")
        try:
            if data is None:
                raise ProtocolError("the hello must be a binary frame", code=ErrorCode.BAD_HELLO)
            header = unpack_header(data)
            if header.kind != Kind.CONTROL:
                raise ProtocolError("the first frame must be a CONTROL hello", code=ErrorCode.BAD_HELLO)
            hello = parse_hello(payload_of(data))
            if hello.protocol not in SUPPORTED_VERSIONS:
                raise ProtocolVersionError(
                    f"protocol version {hello.protocol} is not supported; this relay speaks {sorted(SUPPORTED_VERSIONS)}"
                )
        except ProtocolError as exc:
            accounting.failed(source)  # malformed hellos count like bad keys
            code = exc.code if isinstance(exc, ProtocolVersionError) else ErrorCode.BAD_HELLO
            raise _Refused(type(exc)(exc.message, code=code), CLOSE_PROTOCOL_ERROR) from None
        try:
            identity = await accounting.admit(hello.api_key, source)
        except RemoteRLError as exc:
            raise _Refused(exc, CLOSE_POLICY) from None
        peer = Peer(
            id=f"{hello.role[0]}-{instance}-{next(peer_ids)}",
            role=hello.role,
            workspace=identity.workspace,
            name=hello.name,
            send_raw=lambda frame: send_bytes(ws, frame),
            close=lambda code, reason: ws.close(code, reason),
            key_id=identity.key_id,
            max_envs=hello.max_envs if hello.role == "simulator" else 0,
            capabilities=frozenset(hello.capabilities),
        )
        return peer, identity

    async def refuse(ws: WebSocket, source: str, refused: _Refused) -> None:
        """Tell a refused peer why (if it still listens) and close: one short log line, never a traceback."""
        peer_log.info(refused.error.code.value, "refused a connection from %s: %s", source, refused.error)
        try:
            await send_bytes(ws, error_frame(refused.error.to_wire()))
            await ws.close(refused.close_code, close_reason(refused.error))
        except (OSError, RuntimeError, WebSocketDisconnect):
            pass  # it hung up first: nothing left to tell it

    async def handle_control(peer: Peer, seq: int, payload: memoryview) -> None:
        message = parse_peer_control(payload)
        if peer.role != "trainer" or not isinstance(message, (Open, Release, Locate)):
            raise ProtocolError(
                f"unexpected control message {message.op!r} from a {peer.role}", code=ErrorCode.BAD_PAYLOAD
            )
        if isinstance(message, Open):
            await peer.send(control_frame(await board.open(peer, message), seq))
        elif isinstance(message, Locate):
            await peer.send(control_frame(Regions(regions=directory.regions_for(peer.workspace, board)), seq))
        else:
            await board.release(peer, message.channels)

    async def report(peer: Peer, errors: ErrorBudget, error: RemoteRLError, op: int, channel: int, seq: int) -> bool:
        """Answer a refused frame; False once the peer has used up its budget of them."""
        await peer.send(error_frame(error.to_wire(), op=op, channel=channel, seq=seq))
        return errors.spend()

    @app.websocket("/ws")
    async def relay_socket(ws: WebSocket) -> None:
        source = source_of(ws)
        try:
            await ws.accept()
            try:
                peer, identity = await greet(ws, source)
            except _Refused as refused:
                await refuse(ws, source, refused)
                return
            server_connection(ws).authenticated()
            await serve_peer(ws, peer, identity)
        except (OSError, WebSocketDisconnect):
            pass  # the peer went away mid-send: its handler has cleaned up
        except Exception as exc:  # a peer must never be able to fill the log with tracebacks
            peer_log.warning(type(exc).__name__, "connection from %s ended by %s: %s", source, type(exc).__name__, exc)
            log.debug("connection from %s ended", source, exc_info=True)

    async def serve_peer(ws: WebSocket, peer: Peer, identity: Identity) -> None:
        try:
            simulators = await board.join(peer)
            await peer.send(
                control_frame(
                    Welcome(
                        peer_id=peer.id,
                        workspace=peer.workspace,
                        simulators=simulators,
                        max_frame=config.max_frame,
                        region=directory.region,
                        capabilities=[CAP_LOCATE],
                        quota=accounting.quota(identity.workspace, identity.plan)
                        if config.accounts is not None
                        else None,
                    )
                )
            )
            await pump(ws, peer)
        finally:
            try:
                await board.leave(peer)
            finally:
                accounting.settle(peer)  # its last counts are billed whatever happened

    async def pump(ws: WebSocket, peer: Peer) -> None:
        """The hot loop: one iteration per frame the peer sends."""
        unpack = HEADER.unpack_from
        max_frame = config.max_frame + HEADER_SIZE
        errors = ErrorBudget(config.max_protocol_errors)
        while True:
            within_budget = True
            message = await ws.receive()
            data = message.get("bytes")
            if data is None:
                if message["type"] == "websocket.disconnect":
                    return
                text = ProtocolError("text frames are not part of the protocol")
                within_budget = await report(peer, errors, text, 0, 0, 0)
            else:
                size = len(data)
                peer.bytes_in += size
                peer.frames_in += 1
                try:
                    if size < HEADER_SIZE:
                        raise ProtocolError(f"frame of {size} bytes is shorter than the header")
                    kind, op, channel, seq = unpack(data)
                    if size > max_frame:
                        raise FrameTooLargeError(
                            f"frame of {size - HEADER_SIZE} bytes exceeds the limit of {config.max_frame}"
                        )
                    if kind == Kind.REQUEST or kind == Kind.RESPONSE or kind == Kind.ERROR:
                        if op not in VALID_OPS:
                            raise ProtocolError(f"unknown op {op}", code=ErrorCode.UNKNOWN_OP)
                        await board.forward(peer, data, kind, op, channel, seq)
                    elif kind == Kind.CONTROL:
                        await handle_control(peer, seq, payload_of(data))
                    else:
                        raise ProtocolError(f"unknown frame kind {kind}")
                except RemoteRLError as exc:
                    # Echo the header fields the sender can match on; never an invalid op.
                    op_, channel_, seq_ = (
                        (op if op in VALID_OPS else 0, channel, seq) if size >= HEADER_SIZE else (0, 0, 0)
                    )
                    within_budget = await report(peer, errors, exc, op_, channel_, seq_)
                    if isinstance(exc, FrameTooLargeError) and peer.role == "simulator":
                        # Fail the trainer's request now instead of letting it time out.
                        route = board.channels.get(channel_)
                        if route is not None and route.simulator is peer:
                            await route.trainer.send(error_frame(exc.to_wire(), op=op_, channel=channel_, seq=seq_))
            if not within_budget:
                peer_log.info("too many refused frames", "closing %s from %s: too many refused frames", peer.id,
                              source_of(ws))  # fmt: skip
                if peer.alive:  # not already closed by an operator action
                    await ws.close(CLOSE_POLICY, "too many refused frames")
                return

    return app

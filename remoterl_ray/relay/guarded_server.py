"""The embedded relay's connection limits, enforced where connections are made.

An ASGI app only sees a connection once a whole HTTP request has arrived, so
the bounds that must hold *before* that live here, in subclasses of
uvicorn's h11 HTTP protocol and its sans-I/O WebSocket protocol:

* connections in all, per client address, and per address not yet admitted
  (HTTP requests, WebSockets before their hello passes), refused with a 503
  before a byte is parsed (IPv6 clients count per /64, as they get one each);
* a request must arrive in full within ``handshake_timeout`` (slow or silent
  clients are cut off), with headers of at most ``max_header_bytes``;
* the largest message a peer may send before it is admitted (its hello is a
  few hundred bytes; afterwards, the frame limit);
* bytes queued to a peer: the transport's high-water mark is set to the cap,
  and a peer that lets it fill (it does not read, or floods pings and never
  reads the pongs) is aborted, never waited for: the relay's senders never
  block on one slow peer. Peers get a small cap until the app admits them;
* a closing connection whose peer does not take our last bytes is aborted
  after ``close_timeout`` instead of holding its buffer for ever;
* text frames that are not UTF-8 and malformed upgrade requests end the
  connection with one short, rate-limited log line, not a traceback.

Ray Serve runs its own uvicorn; there the ingress (HAProxy, a load balancer)
provides these bounds (docs/security.md).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from ..rate_limited_log import RateLimitedLog
from .app import CONNECTION_EXTENSION
from .server_limits import ServerLimits

log = logging.getLogger("remoterl.relay")
peer_log = RateLimitedLog(log)

FD_RESERVE = 64  # descriptors kept for the store, logs and the process itself


def address_key(host: str | None) -> str:
    """What per-address limits count by: the address, or its /64 for IPv6."""
    if not host:
        return "?"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class _Entry:
    __slots__ = ("address", "pending")

    def __init__(self, address: str) -> None:
        self.address = address
        self.pending = True


class ConnectionGate:
    """Counts open connections in all and per address (pending ones apart)."""

    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self.total = 0
        self._open: dict[str, int] = {}
        self._pending: dict[str, int] = {}
        self._entries: dict[int, _Entry] = {}

    def enter(self, key: int, address: str) -> str | None:
        """Count a new connection; returns why it is refused (then it is not counted)."""
        limits = self.limits
        if self.total >= limits.max_connections:
            return f"the relay holds its maximum of {limits.max_connections} connections"
        if self._open.get(address, 0) >= limits.max_connections_per_address:
            return f"too many connections from {address} (at most {limits.max_connections_per_address})"
        if self._pending.get(address, 0) >= limits.max_pending_per_address:
            return f"too many connections from {address} not yet admitted (at most {limits.max_pending_per_address})"
        self.total += 1
        self._open[address] = self._open.get(address, 0) + 1
        self._pending[address] = self._pending.get(address, 0) + 1
        self._entries[key] = _Entry(address)
        return None

    def admitted(self, key: int) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry.pending:
            entry.pending = False
            _decrement(self._pending, entry.address)

    def leave(self, key: int) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self.total -= 1
        _decrement(self._open, entry.address)
        if entry.pending:
            _decrement(self._pending, entry.address)


def _decrement(counts: dict[str, int], address: str) -> None:
    left = counts.get(address, 0) - 1
    if left > 0:
        counts[address] = left
    else:
        counts.pop(address, None)


class ServerGuard:
    """What the protocol classes of one server share."""

    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self.gate = ConnectionGate(limits)


def close_then_abort(transport: asyncio.BaseTransport, grace: float) -> None:
    """Close ``transport``; if the peer has not taken our last bytes ``grace`` s later, abort it."""
    transport.close()
    asyncio.get_running_loop().call_later(grace, transport.abort)  # type: ignore[attr-defined]  # no-op once closed


class GuardedHttpProtocol(H11Protocol):
    """uvicorn's h11 protocol with connection counting and a request deadline."""

    guard: ClassVar[ServerGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._refused = False
        self._upgraded = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        address = address_key(self.client[0] if self.client else None)
        refusal = self.guard.gate.enter(id(transport), address)
        if refusal is not None:
            self._refused = True
            peer_log.warning("connection refused", "refused a connection from %s: %s", address, refusal)
            body = f"{refusal}; try again later\n".encode()
            transport.write(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\nRetry-After: 5\r\n\r\n".encode()
                + body
            )
            close_then_abort(transport, self.guard.limits.close_timeout)
            return
        self._arm_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_deadline()
        if not self._refused and not self._upgraded:
            self.guard.gate.leave(id(self.transport))
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self.conn.their_state is h11.DONE:  # the whole request is in: the app has it now
            self._disarm_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_deadline()  # the next request on this connection gets the same time

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._disarm_deadline()
        self._upgraded = True  # the WebSocket protocol owns the gate entry from here on
        super().handle_websocket_upgrade(event)

    def send_400_response(self, msg: str) -> None:
        peer_log.info("bad request", "closing a connection from %s: %s", _client(self.client), msg)
        super().send_400_response(msg)

    def _arm_deadline(self) -> None:
        self._disarm_deadline()
        self._deadline = self.loop.call_later(self.guard.limits.handshake_timeout, self._deadline_passed)

    def _disarm_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        peer_log.info(
            "slow request",
            "closing a connection from %s: no complete request within %.0f s",
            _client(self.client),
            self.guard.limits.handshake_timeout,
        )
        self.transport.abort()


class _Hooks:
    """The per-connection hooks the app reaches through the ASGI scope."""

    def __init__(self, protocol: GuardedWebSocketProtocol) -> None:
        self._protocol = protocol

    def authenticated(self) -> None:
        self._protocol.admitted()


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol whose outgoing buffer is capped."""

    guard: ClassVar[ServerGuard]

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.close_timeout = self.guard.limits.close_timeout
        transport.set_write_buffer_limits(high=self.guard.limits.pre_auth_buffer)
        self._admitted_message = self.conn.max_message_size
        self.conn.max_message_size = self.guard.limits.pre_auth_message

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.gate.leave(id(self.transport))
        super().connection_lost(exc)

    def admitted(self) -> None:
        """The app accepted this peer's hello: the admitted peer's buffer and counts apply."""
        self.guard.gate.admitted(id(self.transport))
        self.conn.max_message_size = self._admitted_message
        if not self.transport.is_closing():
            self.transport.set_write_buffer_limits(high=self.guard.limits.peer_buffer)

    def pause_writing(self) -> None:
        """The buffer passed the cap: this peer does not read. Cut it off, never wait for it."""
        peer_log.info(
            "slow reader",
            "closing a connection from %s: it does not read (%d bytes queued)",
            _client(self.client),
            self.transport.get_write_buffer_size(),
        )
        self.transport.abort()

    def resume_writing(self) -> None:
        return None  # never paused: sends do not wait

    def data_received(self, data: bytes) -> None:
        if not self.handshake_initiated:
            self.conn.receive_data(data)
            if self.conn.handshake_exc is not None:  # a malformed upgrade request: answer it and close
                peer_log.info(
                    "bad upgrade",
                    "closing a connection from %s: %s",
                    _client(self.client),
                    self.conn.handshake_exc,
                )
                self.transport.write(b"".join(self.conn.data_to_send()))
                self.close_sent = True
                close_then_abort(self.transport, self.close_timeout)
                return
            self.handle_events()
            return
        super().data_received(data)

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][CONNECTION_EXTENSION] = _Hooks(self)

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type == "text":
            data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                self.frames = []
                peer_log.info("invalid text", "closing a connection from %s: text frame is not UTF-8",
                              _client(self.client))  # fmt: skip
                self.conn.send_close(1007, "text frames must be UTF-8")
                self.handle_parser_exception()
                return
        super().send_receive_event_to_app()

    def handle_parser_exception(self) -> None:
        code = self.conn.close_sent.code if self.conn.close_sent is not None else 1002
        reason = self.conn.close_sent.reason if self.conn.close_sent is not None else ""
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        close_then_abort(self.transport, self.close_timeout)


def _client(client: tuple[str, int] | None) -> str:
    return client[0] if client else "?"


def protocol_classes(limits: ServerLimits) -> tuple[type[GuardedHttpProtocol], type[GuardedWebSocketProtocol]]:
    """HTTP and WebSocket protocol classes sharing one gate, for one server."""
    guard = ServerGuard(limits)
    http = type("RelayHttpProtocol", (GuardedHttpProtocol,), {"guard": guard})
    ws = type("RelayWebSocketProtocol", (GuardedWebSocketProtocol,), {"guard": guard})
    return http, ws


def raise_fd_limit(limits: ServerLimits) -> ServerLimits:
    """Raise this process's open-file limit as far as allowed, and keep the connection
    cap below it, so refusing a connection is ours to do, not ``accept()``'s failing."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = limits.max_connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft - FD_RESERVE < limits.max_connections:
        fitted = max(16, soft - FD_RESERVE)
        log.warning("open-file limit %d: serving at most %d connections", soft, fitted)
        return limits.model_copy(update={"max_connections": fitted})
    return limits

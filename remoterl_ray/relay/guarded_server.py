"""The embedded relay's connection limits, enforced where connections are made.

An ASGI app only sees a connection once a whole HTTP request has arrived, so
the bounds that must hold *before* that live here, in subclasses of
uvicorn's h11 HTTP protocol and its sans-I/O WebSocket protocol:

* connections in all, per client address, and per address not yet admitted
  (HTTP requests, WebSockets before their hello passes), counted when the TCP
  connection is accepted and refused before a byte is parsed; an IPv6 client
  counts per /64. The TLS handshake runs here too, after the count (with
  asyncio's own TLS layer, ``asyncio.sslproto``, which works on uvloop's
  transports as well): handed to uvicorn, it would happen before any count;
* a request (and a TLS handshake) must arrive in full within
  ``handshake_timeout``, with headers of at most ``max_header_bytes``;
* the largest message a peer may send before it is admitted;
* bytes queued to a peer: the transport's high-water mark is the peer's cap,
  and a peer that lets it fill (it does not read, or floods pings and never
  reads the pongs) is aborted, never waited for, so the relay's senders never
  block on one slow peer. Peers get a small cap until the app admits them,
  and all peers together get ``max_queued_bytes``. Before a cap fills, the
  relay stops reading from a peer whose frames go to a peer that has a
  quarter of its cap queued, until that drops to an eighth (``Flow``): a
  message of many chunks then waits in TCP for a reader that is merely
  slower, instead of getting it cut off. Only the sender waits (and, on its
  connection, what else it sends: its pongs too, so its heartbeat is not
  failed while it was held); a reader that takes less than ``MIN_DRAIN`` in
  any ``STALL_SECONDS`` while senders wait is aborted;
* every close: a peer that does not take our last bytes within
  ``close_timeout`` is aborted, so a closed connection frees its buffer, its
  descriptor and its place in the counts;
* text frames that are not UTF-8 and malformed upgrade requests end the
  connection with one short, rate-limited log line, not a traceback.

Ray Serve runs its own uvicorn; there the ingress (HAProxy, a load balancer)
provides these bounds (docs/security.md).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import resource
import ssl
from asyncio import sslproto
from collections.abc import Callable
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from ..addresses import Networks, address_key
from ..rate_limited_log import RateLimitedLog
from .peer_driver import CONNECTION_EXTENSION
from .server_limits import ServerLimits

log = logging.getLogger("remoterl.relay")
peer_log = RateLimitedLog(log)

FD_RESERVE = 64  # descriptors kept for the store, logs and the process itself
# A reader that senders wait for must take at least MIN_DRAIN bytes in every STALL_SECONDS, or it is cut
# off: a reader that trickles cannot hold its senders (and their other channels) up for long.
STALL_SECONDS = 10.0
MIN_DRAIN = 1 << 20
POLL_SECONDS = 0.005  # how often a reader that senders wait for is looked at again (one timer per reader)
_connection_ids = itertools.count(1)


class _Entry:
    __slots__ = ("address", "pending")

    def __init__(self, address: str | None) -> None:
        self.address = address  # None: not counted per address (a trusted proxy's)
        self.pending = True


class ConnectionGate:
    """Counts open connections in all and per address (pending ones apart)."""

    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self.total = 0
        self._open: dict[str, int] = {}
        self._pending: dict[str, int] = {}
        self._entries: dict[int, _Entry] = {}

    def enter(self, key: int, address: str | None) -> str | None:
        """Count a new connection (per address unless ``address`` is None); returns
        why it is refused, and then it is not counted."""
        limits = self.limits
        if self.total >= limits.max_connections:
            return f"the relay holds its maximum of {limits.max_connections} connections"
        if address is not None:
            if self._open.get(address, 0) >= limits.max_connections_per_address:
                return f"too many connections from {address} (at most {limits.max_connections_per_address})"
            if self._pending.get(address, 0) >= limits.max_pending_per_address:
                return (
                    f"too many connections from {address} not yet admitted "
                    f"(at most {limits.max_pending_per_address})"
                )
            self._open[address] = self._open.get(address, 0) + 1
            self._pending[address] = self._pending.get(address, 0) + 1
        self.total += 1
        self._entries[key] = _Entry(address)
        return None

    def admitted(self, key: int) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry.pending:
            entry.pending = False
            if entry.address is not None:
                _decrement(self._pending, entry.address)

    def leave(self, key: int) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self.total -= 1
        if entry.address is not None:
            _decrement(self._open, entry.address)
            if entry.pending:
                _decrement(self._pending, entry.address)


def _decrement(counts: dict[str, int], address: str) -> None:
    left = counts.get(address, 0) - 1
    if left > 0:
        counts[address] = left
    else:
        counts.pop(address, None)


class QueueBudget:
    """Bytes queued to all peers together. Each write updates its connection's
    share; past the limit the shares are re-read and the peers with the most
    queued are cut off until the rest fit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self.members: set[GuardedTransport] = set()

    def changed(self, delta: int) -> None:
        self.total += delta
        if self.total > self.limit:
            self._shed()

    def _shed(self) -> None:
        self.total = 0
        for member in self.members:
            member.queued = member.inner.get_write_buffer_size()
            self.total += member.queued
        while self.total > self.limit and self.members:
            worst = max(self.members, key=lambda m: m.queued)
            peer_log.info("queue budget", "closing %s: the relay's queues are full and it holds the most (%d bytes)",
                          worst.client, worst.queued)  # fmt: skip
            self.forget(worst)
            worst.inner.abort()

    def forget(self, transport: GuardedTransport) -> None:
        if transport in self.members:
            self.members.discard(transport)
            self.total -= transport.queued
            transport.queued = 0


class GuardedTransport:
    """A connection's transport as the relay's protocols see it: every ``close``
    turns into an abort if the peer has not taken our last bytes
    ``close_timeout`` seconds later, and what it queues counts towards the
    server's budget."""

    def __init__(self, inner: asyncio.Transport, guard: ServerGuard, key: int, client: str) -> None:
        self.inner = inner
        self.guard = guard
        self.key = key  # its entry in the gate
        self.client = client
        self.queued = 0
        self.written = 0  # bytes ever handed to write (what it drained: this, less what is still queued)
        self._closing = False
        self._server_paused = False  # uvicorn's own pause (while its queue holds a message)
        self._held_by: GuardedTransport | None = None  # the reader this peer's frames wait for
        self._read_paused = False
        self._waiters: set[GuardedTransport] = set()  # as a reader: the senders waiting for it to drain
        self._drain_timer: asyncio.TimerHandle | None = None
        self._window = (0, 0.0)  # as a reader: bytes drained when the current STALL_SECONDS began, and when
        self._last_held = float("-inf")  # as a sender: when it was last held (its pongs may wait unread)
        guard.queue.members.add(self)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        inner = self.inner
        inner.write(data)
        self.written += len(data)
        size = inner.get_write_buffer_size()
        if size != self.queued:
            delta, self.queued = size - self.queued, size
            self.guard.queue.changed(delta)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def close(self) -> None:
        self.inner.close()
        if not self._closing:
            self._closing = True
            asyncio.get_running_loop().call_later(self.guard.limits.close_timeout, self.inner.abort)  # no-op once closed

    def lost(self) -> None:
        """The connection is gone: out of every count, and out of the flow control."""
        self.guard.queue.forget(self)
        self.guard.gate.leave(self.key)
        if self._held_by is not None:
            self._held_by._waiters.discard(self)
            self._held_by = None
        self._release_waiters()

    # -- flow control: reading pauses for the server's reasons and for ours, apart --

    def pause_reading(self) -> None:
        self._server_paused = True
        self._apply_reading()

    def resume_reading(self) -> None:
        self._server_paused = False
        self._apply_reading()

    def _apply_reading(self) -> None:
        paused = self._server_paused or self._held_by is not None
        if paused != self._read_paused and not self.inner.is_closing():
            self._read_paused = paused
            (self.inner.pause_reading if paused else self.inner.resume_reading)()

    def backlog(self) -> int:
        return self.inner.get_write_buffer_size()

    def hold_for(self, reader: GuardedTransport) -> None:
        """Stop reading from this peer until ``reader``'s queue drains (or it is gone)."""
        if self._held_by is not None or self._closing or self.inner.is_closing():
            return
        self._held_by = reader
        self._last_held = asyncio.get_running_loop().time()
        self._apply_reading()
        reader._wait_for_drain(self)

    def held_within(self, seconds: float) -> bool:
        """Whether reading from this peer was held up in the last ``seconds`` (or is now)."""
        return self._held_by is not None or asyncio.get_running_loop().time() - self._last_held < seconds

    def drained(self) -> int:
        return self.written - self.backlog()

    def _wait_for_drain(self, sender: GuardedTransport) -> None:
        """``sender`` waits for this reader: one timer per reader, however many wait."""
        self._waiters.add(sender)
        if self._drain_timer is None:
            loop = asyncio.get_running_loop()
            self._window = (self.drained(), loop.time())
            self._drain_timer = loop.call_later(POLL_SECONDS, self._check_drain)

    def _check_drain(self) -> None:
        self._drain_timer = None
        if not self._waiters:
            return
        loop = asyncio.get_running_loop()
        if self.inner.is_closing() or self.backlog() <= self.guard.limits.peer_buffer // 8:
            self._release_waiters()
            return
        drained_then, since = self._window
        if loop.time() - since >= STALL_SECONDS:
            drained = self.drained() - drained_then
            if drained < MIN_DRAIN:
                peer_log.info("slow reader", "closing a connection from %s: it took %d bytes in %gs (%d queued)",
                              self.client, drained, STALL_SECONDS, self.backlog())  # fmt: skip
                self.inner.abort()
                self._release_waiters()
                return
            self._window = (self.drained(), loop.time())
        self._drain_timer = loop.call_later(POLL_SECONDS, self._check_drain)

    def _release_waiters(self) -> None:
        waiters, self._waiters = self._waiters, set()
        now = asyncio.get_running_loop().time() if waiters else 0.0
        for sender in waiters:
            sender._held_by = None
            sender._last_held = now
            sender._apply_reading()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Flow:
    """One connection's side of the relay's flow control, as the app sees it (see the module docstring)."""

    __slots__ = ("transport", "_soft")

    def __init__(self, transport: GuardedTransport) -> None:
        self.transport = transport
        self._soft = transport.guard.limits.peer_buffer // 4

    def sent_to(self, reader: Flow) -> None:
        """This peer's frame went to ``reader``: if it has too much queued, read no more from this peer for now."""
        if reader.transport.backlog() > self._soft:
            self.transport.hold_for(reader.transport)


class ServerGuard:
    """What the protocol classes of one server share."""

    def __init__(self, limits: ServerLimits, *, trusted_proxies: Networks, tls: ssl.SSLContext | None) -> None:
        self.limits = limits
        self.gate = ConnectionGate(limits)
        self.queue = QueueBudget(limits.max_queued_bytes)
        self.trusted_proxies = trusted_proxies
        self.tls = tls


class GuardedHttpProtocol(H11Protocol):
    """uvicorn's h11 protocol with connection counting, TLS in turn, and a request deadline."""

    guard: ClassVar[ServerGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._guarded: GuardedTransport | None = None
        self._handshaking: tuple[int, str | None] | None = None  # (gate key, host) during a TLS handshake
        self._upgraded = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if self._handshaking is not None:  # called again by the TLS layer: the handshake is done
            key, host = self._handshaking
            self._handshaking = None
            self._begin(transport, key, host)
            return
        peer = transport.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, (tuple, list)) and peer else None
        key = next(_connection_ids)
        trusted = host in self.guard.trusted_proxies  # its clients are counted by the proxy, not here
        refusal = self.guard.gate.enter(key, None if trusted else address_key(host))
        if refusal is not None:
            self._refuse(transport, host, refusal)
            return
        if self.guard.tls is None:
            self._begin(transport, key, host)
            return
        # TLS on a connection already counted: the TLS layer takes the socket now, so
        # not a byte reaches h11 first, and calls connection_made again once done.
        self._handshaking = (key, host)
        done = self.loop.create_future()
        done.add_done_callback(self._handshake_done)
        layer = sslproto.SSLProtocol(
            self.loop, self, self.guard.tls, done, server_side=True, call_connection_made=True,
            ssl_handshake_timeout=self.guard.limits.handshake_timeout,
        )  # fmt: skip
        transport.set_protocol(layer)
        layer.connection_made(transport)

    def _handshake_done(self, done: asyncio.Future[None]) -> None:
        error = done.exception() if not done.cancelled() else asyncio.CancelledError()
        if error is None or self._handshaking is None:
            return
        key, host = self._handshaking
        self._handshaking = None
        peer_log.info("tls handshake", "closing a connection from %s: TLS handshake failed (%s)", host,
                      type(error).__name__)  # fmt: skip
        self.guard.gate.leave(key)

    def _begin(self, transport: asyncio.Transport, key: int, host: str | None) -> None:
        self._guarded = GuardedTransport(transport, self.guard, key, host or "?")
        super().connection_made(self._guarded)  # type: ignore[arg-type]
        self._arm_deadline()

    def _refuse(self, transport: asyncio.Transport, host: str | None, refusal: str) -> None:
        peer_log.warning("connection refused", "refused a connection from %s: %s", host, refusal)
        if self.guard.tls is None:  # a TLS client could not read a plain answer
            body = f"{refusal}; try again later\n".encode()
            transport.write(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\nRetry-After: 5\r\n\r\n".encode()
                + body
            )
        transport.close()
        self.loop.call_later(self.guard.limits.close_timeout, transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._guarded is None:
            return  # refused: never counted, nothing of uvicorn's set up
        self._disarm_deadline()
        if not self._upgraded:
            self._guarded.lost()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._guarded is None:
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
        self._upgraded = True  # the WebSocket protocol owns the counts from here on
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

    def writer(self) -> Callable[[bytes], None]:
        return self._protocol.send_binary_now

    def take_frames(self, handler: Callable[[bytes], bool] | None) -> None:
        self._protocol.direct = handler

    def flow(self) -> Flow:
        return Flow(self._protocol.transport)


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol whose outgoing buffer is capped.

    Binary messages can also skip ASGI: ``direct`` (set by the app once a peer is
    admitted) is offered each one as it arrives, while nothing waits in the ASGI
    queue, and takes it or leaves it to the queue; ``send_binary_now`` writes one
    at once. The relay forwards frames this way without a task switch, a queue
    and a pause of reading per message (Ray Serve's server has neither)."""

    guard: ClassVar[ServerGuard]
    direct: Callable[[bytes], bool] | None = None

    def send_binary_now(self, data: bytes) -> None:
        """What uvicorn's ASGI ``websocket.send`` of ``data`` does, done now."""
        if self.disconnected or self.transport.is_closing():  # aborted: nothing written is delivered
            raise ClientDisconnected()
        if self.close_sent or not self.handshake_complete:
            raise RuntimeError("the WebSocket is closing")
        self.conn.send_binary(data)
        self.transport.write(b"".join(self.conn.data_to_send()))

    def connection_made(self, transport: Any) -> None:  # the h11 protocol's GuardedTransport
        super().connection_made(transport)
        self.close_timeout = self.guard.limits.close_timeout
        transport.set_write_buffer_limits(high=self.guard.limits.pre_auth_buffer)
        self._admitted_message = self.conn.max_message_size
        self.conn.max_message_size = self.guard.limits.pre_auth_message

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport.lost()
        super().connection_lost(exc)

    def admitted(self) -> None:
        """The app accepted this peer's hello: the admitted peer's buffer and counts apply."""
        self.guard.gate.admitted(self.transport.key)
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

    def keepalive_timeout(self) -> None:
        """No pong in time: the peer is gone, unless we held reading from it up (its pong
        then waits unread behind frames for a slow reader): then it gets another while."""
        if isinstance(self.transport, GuardedTransport) and self.transport.held_within(self.ping_timeout or 0.0):
            self.pong_timer = self.loop.call_later(self.ping_timeout or 0.0, self.keepalive_timeout)
            return
        super().keepalive_timeout()

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
                self.transport.close()
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
        direct = self.direct
        if (
            direct is not None
            and self.curr_msg_data_type == "bytes"
            and not self.close_sent
            and not self.transport.is_closing()
            and self.queue.empty()
        ):
            data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
            self.frames = [data]  # joined once, whichever path takes it
            if direct(data):
                self.frames = []
                return
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
        self.transport.close()


def _client(client: tuple[str, int] | None) -> str:
    return client[0] if client else "?"


def protocol_classes(
    limits: ServerLimits, *, trusted_proxies: Networks | None = None, tls: ssl.SSLContext | None = None
) -> tuple[type[GuardedHttpProtocol], type[GuardedWebSocketProtocol]]:
    """HTTP and WebSocket protocol classes sharing one gate and budget, for one server.
    With ``tls`` the HTTP protocol runs the TLS handshake itself, after counting
    the connection (uvicorn must then not be given certificates of its own)."""
    guard = ServerGuard(limits, trusted_proxies=trusted_proxies or Networks(), tls=tls)
    http = type("RelayHttpProtocol", (GuardedHttpProtocol,), {"guard": guard})
    ws = type("RelayWebSocketProtocol", (GuardedWebSocketProtocol,), {"guard": guard})
    return http, ws


def server_tls_context(cert: str, key: str) -> ssl.SSLContext:
    """The relay's TLS context for ``wss://`` and ``https://`` (HTTP/1.1, TLS 1.2 or newer)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    return context


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

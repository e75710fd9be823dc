"""Layer 2: a synchronous WebSocket client whose callers read the socket themselves.

websockets' synchronous client reads the socket in a background thread and
hands each message over to the thread waiting for it: one thread switch per
answer, a sizeable share of a sub-millisecond round trip. This client drives
websockets' sans-I/O ``ClientProtocol`` itself, and the thread that waits for
a message reads the socket (one at a time).

A keeper thread sends our heartbeat pings and fails the connection when one
goes unanswered. While nobody has read for a while (a long gradient update, a
long env step) it also reads what arrived, so the relay's pings are answered;
the messages it reads wait, in order, for the next reader (at most
``MAX_QUEUED``: a peer flooding an idle client is held back by TCP, not
buffered here).

It raises what the websockets client raises (``OSError``, ``InvalidHandshake``,
``InvalidURI`` or ``TimeoutError`` while connecting, ``ConnectionClosed`` once
closed), so callers map failures the same way.
"""

from __future__ import annotations

import os
import selectors
import socket
import ssl as ssl_module
import threading
import time
from collections import deque

from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK
from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.http11 import USER_AGENT
from websockets.protocol import State
from websockets.uri import parse_uri

READ_SIZE = 256 * 1024  # bytes asked of the socket per read
KEEPER_TICK = 0.1  # seconds between the keeper's looks at an idle connection (a pong goes out at most ~2 ticks late)
MAX_QUEUED = 16  # messages the keeper reads ahead of the callers; then TCP holds the rest back
CLOSE_WAIT = 1.0  # seconds :meth:`WebSocket.close` waits for the relay's closing frame


class WebSocket:
    """An open client WebSocket; thread-safe. Build it with :meth:`connect`."""

    def __init__(
        self, sock: socket.socket, protocol: ClientProtocol, *, ping_interval: float | None, ping_timeout: float | None
    ) -> None:
        self._sock = sock
        self._protocol = protocol
        self._write_lock = threading.Lock()  # the sans-I/O protocol, and writes to the socket
        self._read_lock = threading.Lock()  # one reader of the socket at a time
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ)
        self._messages: deque[bytes] = deque()  # read, not yet received
        self._fragments: list[bytes] | None = None  # a fragmented message being read
        self._closed: ConnectionClosed | None = None
        self._last_read = time.monotonic()
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._ping: tuple[bytes, float] | None = None  # the heartbeat awaiting its pong, and when it was sent
        self._last_ping = time.monotonic()
        self._stop = threading.Event()
        self._keeper = threading.Thread(target=self._keep, name="remoterl-websocket-keeper", daemon=True)
        self._keeper.start()

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        ssl: ssl_module.SSLContext | None = None,
        open_timeout: float = 10.0,
        max_size: int | None = 2**20,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        additional_headers: dict[str, str] | None = None,
    ) -> WebSocket:
        """Open the TCP connection (TLS for ``wss://``) and do the opening handshake,
        all within ``open_timeout``. No proxy, no compression, no redirects."""
        uri = parse_uri(url)
        deadline = time.monotonic() + open_timeout
        sock = socket.create_connection((uri.host, uri.port), timeout=open_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
            if uri.secure:
                sock.settimeout(_remaining(deadline))
                sock = (ssl or ssl_module.create_default_context()).wrap_socket(sock, server_hostname=uri.host)
            protocol = ClientProtocol(uri, max_size=max_size)
            request = protocol.connect()
            request.headers.update(additional_headers or {})
            request.headers.setdefault("User-Agent", USER_AGENT)
            protocol.send_request(request)
            early = _handshake(sock, protocol, deadline)
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)  # waits are the selector's; a stalled peer is the keeper's to find
        ws = cls(sock, protocol, ping_interval=ping_interval, ping_timeout=ping_timeout)
        ws._take(early)
        return ws

    # -- sending ----------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Send one binary message."""
        with self._write_lock:
            if self._closed is not None:
                raise self._closed
            self._protocol.send_binary(data)
            self._write()

    def _write(self) -> None:
        """Send what the protocol has queued (write lock held)."""
        for chunk in self._protocol.data_to_send():
            try:
                if chunk:
                    self._sock.sendall(chunk)
                else:  # the protocol's end of stream
                    self._sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._lost()
                assert self._closed is not None
                raise self._closed from None

    # -- receiving --------------------------------------------------------

    def recv(self, timeout: float | None = None) -> bytes:
        """The next message; ``TimeoutError`` when none came within ``timeout``
        seconds (None: wait as long as the connection lives)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._read_lock.acquire(timeout=-1 if deadline is None else max(0.0, timeout or 0.0)):
            raise TimeoutError("timed out waiting for a message")
        try:
            while True:
                if self._messages:
                    return self._messages.popleft()
                if self._closed is not None:
                    raise self._closed
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError("timed out waiting for a message")
                if self._readable(remaining):
                    self._read_once()
        finally:
            self._last_read = time.monotonic()
            self._read_lock.release()

    def _readable(self, timeout: float | None) -> bool:
        """Whether a read would not block (read lock held)."""
        pending = getattr(self._sock, "pending", None)  # TLS: bytes decrypted but not yet read
        if pending is not None and pending():
            return True
        try:
            return bool(self._selector.select(timeout))
        except (OSError, ValueError):  # closed under us
            self._lost()
            return False

    def _read_once(self) -> None:
        """One read of the socket, its frames handled (read lock held)."""
        try:
            data = self._sock.recv(READ_SIZE)
        except (OSError, ValueError):
            data = b""
        with self._write_lock:
            if self._closed is not None:
                return
            if data:
                self._protocol.receive_data(data)
            else:
                self._protocol.receive_eof()
            self._take(self._protocol.events_received())
            try:
                self._write()  # pongs, our half of a closing handshake
            except ConnectionClosed:
                return
            if self._protocol.state is not State.OPEN:
                self._lost()

    def _take(self, frames: list[Frame]) -> None:
        """Keep the messages among ``frames``; note the pong of our heartbeat."""
        for frame in frames:
            if frame.opcode in (Opcode.BINARY, Opcode.TEXT):
                if frame.fin:
                    self._messages.append(bytes(frame.data))
                else:
                    self._fragments = [bytes(frame.data)]
            elif frame.opcode is Opcode.CONT and self._fragments is not None:
                self._fragments.append(bytes(frame.data))
                if frame.fin:
                    self._messages.append(b"".join(self._fragments))
                    self._fragments = None
            elif frame.opcode is Opcode.PONG and self._ping is not None and frame.data == self._ping[0]:
                self._ping = None

    def _lost(self, sent: Close | None = None) -> None:
        """The connection is over: remember why (what the relay's closing frame said),
        and shut the socket so that a blocked reader or writer wakes."""
        if self._closed is None:
            if self._protocol.state is State.CLOSED:
                self._closed = self._protocol.close_exc
            else:
                rcvd, sent = self._protocol.close_rcvd, sent or self._protocol.close_sent
                rcvd_first = None if rcvd is None or sent is None else bool(self._protocol.close_rcvd_then_sent)
                self._closed = ConnectionClosedError(rcvd, sent, rcvd_first)
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- keeping the connection alive ---------------------------------------

    def _keep(self) -> None:
        tick = KEEPER_TICK if self._ping_interval is None else min(KEEPER_TICK, self._ping_interval / 2)
        while not self._stop.wait(tick) and self._closed is None:
            self._heartbeat()
            if time.monotonic() - self._last_read >= tick and self._read_lock.acquire(blocking=False):
                try:  # nobody reads: take what arrived, answering the relay's pings
                    while self._closed is None and len(self._messages) < MAX_QUEUED and self._readable(0):
                        self._read_once()
                finally:
                    self._read_lock.release()

    def _heartbeat(self) -> None:
        """Send a ping every ``ping_interval``; fail the connection when a pong (or the
        chance to send the ping at all) takes longer than ``ping_timeout``."""
        if self._ping_interval is None:
            return
        now = time.monotonic()
        if self._ping is not None:
            if self._ping_timeout is not None and now - self._ping[1] > self._ping_timeout:
                self._lost(Close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout"))
            return
        if now - self._last_ping < self._ping_interval:
            return
        if not self._write_lock.acquire(timeout=self._ping_timeout if self._ping_timeout is not None else -1):
            self._lost(Close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout"))  # a write stalled that long
            return
        try:
            if self._closed is None:
                data = os.urandom(4)
                self._ping = (data, now)
                self._last_ping = now
                self._protocol.send_ping(data)
                self._write()
        except ConnectionClosed:
            pass
        finally:
            self._write_lock.release()

    # -- closing ------------------------------------------------------------

    def close(self) -> None:
        """Close with code 1000, waiting up to a second for the relay's closing frame."""
        self._stop.set()
        if self._write_lock.acquire(timeout=CLOSE_WAIT):
            try:
                if self._closed is None and self._protocol.state is State.OPEN:
                    self._protocol.send_close(CloseCode.NORMAL_CLOSURE)
                    self._write()
            except ConnectionClosed:
                pass
            finally:
                self._write_lock.release()
        if self._read_lock.acquire(timeout=CLOSE_WAIT):
            try:
                deadline = time.monotonic() + CLOSE_WAIT
                while self._closed is None and self._readable(max(0.0, deadline - time.monotonic())):
                    self._read_once()
            finally:
                self._read_lock.release()
        if self._closed is None:
            self._closed = ConnectionClosedOK(None, Close(CloseCode.NORMAL_CLOSURE, ""))
        self._lost()
        self._sock.close()
        self._selector.close()


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("timed out during the opening handshake")
    return remaining


def _handshake(sock: socket.socket, protocol: ClientProtocol, deadline: float) -> list[Frame]:
    """Send the upgrade request and read the response; returns frames that came with it."""
    for chunk in protocol.data_to_send():
        sock.sendall(chunk)
    while True:
        events = protocol.events_received()
        if events or protocol.handshake_exc is not None:
            break
        sock.settimeout(_remaining(deadline))
        data = sock.recv(READ_SIZE)
        if data:
            protocol.receive_data(data)
        else:
            protocol.receive_eof()
    if protocol.handshake_exc is not None:
        raise protocol.handshake_exc
    return [event for event in events[1:] if isinstance(event, Frame)]

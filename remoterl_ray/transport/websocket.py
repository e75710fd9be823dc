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

The socket is non-blocking: a read never waits for the rest of a TLS record,
and every write has a deadline (no progress for ``ping_timeout``, or
``CLOSE_WAIT`` when closing), after which the connection is failed. A peer
can neither wedge a reader, the keeper or a closing thread, nor grow a
message past ``max_size`` or ``MAX_FRAGMENTS`` frames.

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
from collections.abc import Sequence

from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK
from websockets.frames import OK_CLOSE_CODES, Close, CloseCode, Frame, Opcode
from websockets.http11 import USER_AGENT
from websockets.protocol import State
from websockets.uri import parse_uri

READ_SIZE = 64 * 1024  # bytes asked of the socket per read (a read of tiny frames is work to parse: bounded)
KEEPER_READ_SIZE = 16 * 1024  # the keeper reads less at a time, so its heartbeat runs often whatever arrives
KEEPER_TICK = 0.1  # seconds between the keeper's looks at an idle connection (a pong goes out at most ~2 ticks late)
MAX_QUEUED = 16  # messages the keeper reads ahead of the callers; then TCP holds the rest back
MAX_FRAGMENTS = 1024  # frames one message may come in (our peers send one)
WRITE_STALL = 20.0  # seconds a write may make no progress without a heartbeat to bound it
CLOSE_WAIT = 1.0  # seconds :meth:`WebSocket.close` spends on the closing handshake
JOIN_LIMIT = 64 * 1024  # bytes of frames a TLS socket gets joined into one write (larger ones go one by one)
MAX_IOV = 64  # buffers per sendmsg (far below the system's IOV_MAX)
_NOT_YET = (BlockingIOError, InterruptedError, ssl_module.SSLWantReadError, ssl_module.SSLWantWriteError)


def closed_error(rcvd: Close | None, sent: Close | None, rcvd_first: bool | None = None) -> ConnectionClosed:
    """The exception for a closed connection, OK or not as websockets decides it."""
    both = rcvd is not None and sent is not None
    ok = both and rcvd.code in OK_CLOSE_CODES and sent.code in OK_CLOSE_CODES  # type: ignore[union-attr]
    rcvd_first = (True if rcvd_first is None else rcvd_first) if both else None
    return (ConnectionClosedOK if ok else ConnectionClosedError)(rcvd, sent, rcvd_first)


class WebSocket:
    """An open client WebSocket; thread-safe. Build it with :meth:`connect`."""

    def __init__(
        self,
        sock: socket.socket,
        protocol: ClientProtocol,
        *,
        ping_interval: float | None,
        ping_timeout: float | None,
        early: list[Frame] | None = None,
    ) -> None:
        self._sock = sock
        self._protocol = protocol
        self._write_lock = threading.Lock()  # the sans-I/O protocol, and writes to the socket
        self._writer: int | None = None  # the thread inside send, to refuse re-entry instead of deadlocking
        self._read_lock = threading.Lock()  # one reader of the socket at a time
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ)
        self._messages: deque[bytes] = deque()  # read, not yet received
        self._fragments: bytearray | None = None  # a fragmented message being read
        self._fragment_count = 0
        self._closed: ConnectionClosed | None = None
        self._closing = False  # close() has begun: messages are no longer kept
        self._last_read = time.monotonic()
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._write_stall = ping_timeout if ping_timeout is not None else WRITE_STALL
        self._ping: tuple[bytes, float] | None = None  # the heartbeat awaiting its pong, and when it was sent
        self._last_ping = time.monotonic()
        self._stop = threading.Event()
        with self._write_lock:
            self._take(early or [])
            self._settle()
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
            sock.setblocking(False)  # waits are the selector's, each with its deadline
        except BaseException:
            sock.close()
            raise
        return cls(sock, protocol, ping_interval=ping_interval, ping_timeout=ping_timeout, early=early)

    # -- sending ----------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Send one binary message (see :meth:`send_many`)."""
        self.send_many((data,))

    def send_many(self, messages: Sequence[bytes]) -> None:
        """Send binary messages in one write where the socket takes it: the requests
        for several simulators leave together, so the relay wakes once for all of them
        instead of answering the first while the second waits to be written. Not from
        code that runs inside a send of this thread (a finalizer, a signal handler):
        that is refused, not a deadlock."""
        me = threading.get_ident()
        if self._writer == me:
            raise RuntimeError("WebSocket.send re-entered from the thread already sending (a finalizer?)")
        with self._write_lock:
            self._writer = me
            try:
                self._check_open()
                try:
                    for data in messages:
                        self._protocol.send_binary(data)
                except BaseException:  # some frames queued, not all: none may go out later with a pong
                    self._lost()
                    raise
                self._write(self._write_stall)
            finally:
                self._writer = None

    def _check_open(self) -> None:
        """Raise the closing exception unless the connection is open (write lock held)."""
        if self._closed is None and self._protocol.state is not State.OPEN:
            self._lost()
        if self._closed is not None:
            raise self._closed

    def _write(self, stall: float) -> None:
        """Send what the protocol has queued (write lock held), consecutive frames in
        one write; a write that makes no progress for ``stall`` seconds fails the
        connection (a frame cut short cannot go on)."""
        try:
            queued: list[memoryview] = []
            for chunk in self._protocol.data_to_send():
                if chunk:
                    queued.append(memoryview(chunk))
                    continue
                if queued:  # the protocol's end of stream, after what came before it
                    self._send_all(queued, stall)
                    queued = []
                self._shutdown(socket.SHUT_WR)
            if queued:
                self._send_all(queued, stall)
        except (OSError, ValueError):
            self._lost()
            assert self._closed is not None
            raise self._closed from None
        except BaseException:  # interrupted mid-frame (KeyboardInterrupt): the stream cannot go on
            self._lost()
            raise

    def _send_all(self, buffers: list[memoryview], stall: float) -> None:
        """Write ``buffers`` in order: one ``sendmsg`` for all of them on a plain
        socket; joined first when small on a TLS one (which has no ``sendmsg``)."""
        vectored = type(self._sock) is socket.socket and hasattr(self._sock, "sendmsg")  # not on Windows
        if not vectored and len(buffers) > 1 and sum(map(len, buffers)) <= JOIN_LIMIT:
            buffers = [memoryview(b"".join(buffers))]
        writable: selectors.BaseSelector | None = None  # made only when the socket's buffer is full
        try:
            while buffers:
                try:
                    sent = self._sock.sendmsg(buffers[:MAX_IOV]) if vectored else self._sock.send(buffers[0])
                except _NOT_YET:
                    sent = 0
                if sent:
                    while sent:  # drop what went out, whole buffers first
                        if sent >= len(buffers[0]):
                            sent -= len(buffers.pop(0))
                        else:
                            buffers[0], sent = buffers[0][sent:], 0
                    continue
                if writable is None:
                    writable = selectors.DefaultSelector()
                    writable.register(self._sock, selectors.EVENT_WRITE)
                if not writable.select(stall):
                    raise TimeoutError(f"no byte could be written for {stall:.0f}s")
        finally:
            if writable is not None:
                writable.close()

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
        """Whether there may be something to read (read lock held)."""
        pending = getattr(self._sock, "pending", None)  # TLS: bytes decrypted but not yet read
        if pending is not None and pending():
            return True
        try:
            return bool(self._selector.select(timeout))
        except (OSError, ValueError):  # closed under us
            self._lost()
            return False

    def _read_once(self, size: int = READ_SIZE) -> None:
        """One read of the socket, its frames handled (read lock held). Never waits:
        half a TLS record is left for the next read."""
        try:
            data = self._sock.recv(size)
        except _NOT_YET:
            return
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
                self._write(self._write_stall)  # pongs, our half of a closing handshake
            except ConnectionClosed:
                return
            self._settle()

    def _take(self, frames: list[Frame]) -> None:
        """Keep the messages among ``frames``; note the pong of our heartbeat (write lock held)."""
        for frame in frames:
            opcode = frame.opcode
            if opcode is Opcode.BINARY or opcode is Opcode.TEXT or opcode is Opcode.CONT:
                if opcode is Opcode.TEXT:
                    self._protocol.fail(CloseCode.UNSUPPORTED_DATA, "binary frames only")
                    return
                if opcode is Opcode.CONT:
                    if self._fragments is None:
                        continue  # the protocol refuses a continuation that follows nothing
                    self._fragment_count += 1
                    if self._fragment_count > MAX_FRAGMENTS:
                        self._protocol.fail(CloseCode.MESSAGE_TOO_BIG, f"more than {MAX_FRAGMENTS} fragments")
                        return
                    self._fragments += frame.data
                elif not frame.fin:
                    self._fragments, self._fragment_count = bytearray(frame.data), 1
                if frame.fin:
                    message = bytes(frame.data) if self._fragments is None else bytes(self._fragments)
                    self._fragments = None
                    if not self._closing:
                        self._messages.append(message)
            elif opcode is Opcode.PONG and self._ping is not None and frame.data == self._ping[0]:
                self._ping = None

    def _settle(self) -> None:
        """Once the protocol is no longer open, the connection is over (write lock held)."""
        if self._protocol.state is not State.OPEN:
            self._write_quietly()
            self._lost()

    def _write_quietly(self) -> None:
        try:
            self._write(CLOSE_WAIT)  # a close frame the protocol queued
        except ConnectionClosed:
            pass

    def _lost(self, sent: Close | None = None) -> None:
        """The connection is over: remember why (what the relay's closing frame said),
        and shut the socket so that a blocked reader or writer wakes."""
        if self._closed is None:
            protocol = self._protocol
            if protocol.state is State.CLOSED and sent is None:
                self._closed = protocol.close_exc
            else:
                rcvd, sent = protocol.close_rcvd, sent or protocol.close_sent
                self._closed = closed_error(rcvd, sent, protocol.close_rcvd_then_sent)
        self._shutdown(socket.SHUT_RDWR)

    def _shutdown(self, how: int) -> None:
        try:  # the plain socket's shutdown: an SSL socket's would drop its TLS state under a writer
            socket.socket.shutdown(self._sock, how)
        except (OSError, ValueError):
            pass

    # -- keeping the connection alive ---------------------------------------

    def _keep(self) -> None:
        tick = KEEPER_TICK if self._ping_interval is None else min(KEEPER_TICK, self._ping_interval / 2)
        while not self._stop.wait(tick) and self._closed is None:
            self._heartbeat()
            if time.monotonic() - self._last_read >= tick and self._read_lock.acquire(blocking=False):
                try:  # nobody reads: take what arrived, answering the relay's pings, for at most a tick
                    until = time.monotonic() + tick
                    while self._closed is None and len(self._messages) < MAX_QUEUED and time.monotonic() < until:
                        if not self._readable(0):
                            break
                        self._read_once(KEEPER_READ_SIZE)
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
        if not self._write_lock.acquire(timeout=self._write_stall):
            self._lost(Close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout"))  # a write stalled that long
            return
        try:
            self._check_open()
            data = os.urandom(4)
            self._ping = (data, now)
            self._last_ping = now
            self._protocol.send_ping(data)
            self._write(self._write_stall)
        except ConnectionClosed:
            pass
        finally:
            self._write_lock.release()

    # -- closing ------------------------------------------------------------

    def close(self, code: int = CloseCode.NORMAL_CLOSURE) -> None:
        """Close with ``code`` (1000: a goodbye; 1001: going away, to come back),
        spending at most about ``CLOSE_WAIT`` seconds on each half of the closing handshake."""
        self._stop.set()
        self._closing = True
        if self._write_lock.acquire(timeout=CLOSE_WAIT):
            try:
                if self._closed is None and self._protocol.state is State.OPEN:
                    self._protocol.send_close(code)
                    self._write(CLOSE_WAIT)
            except ConnectionClosed:
                pass
            finally:
                self._write_lock.release()
        if self._read_lock.acquire(timeout=CLOSE_WAIT):
            try:  # the relay's closing frame; whatever else comes is dropped
                deadline = time.monotonic() + CLOSE_WAIT
                while self._closed is None and self._readable(max(0.0, deadline - time.monotonic())):
                    self._read_once()
                    if time.monotonic() >= deadline:
                        break
            finally:
                self._read_lock.release()
        if self._closed is None:
            self._closed = closed_error(None, Close(code, ""))
        self._lost()
        self._messages.clear()
        self._selector.close()
        self._sock.close()


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("timed out during the opening handshake")
    return remaining


def _handshake(sock: socket.socket, protocol: ClientProtocol, deadline: float) -> list[Frame]:
    """Send the upgrade request and read the response; returns frames that came with it."""
    for chunk in protocol.data_to_send():
        sock.settimeout(_remaining(deadline))
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

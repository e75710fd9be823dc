"""Layer 2: one client connection to the relay, used by trainers and simulators.

Built on the ``websockets`` synchronous client, because Gymnasium's API is
synchronous: a caller sends and then waits for its answers in its own thread,
with no event-loop hop. The library's background thread answers WebSocket
pings (our heartbeat) even while the caller is busy in a long env step.

Several requests can be in flight: each has a sequence id; :meth:`call` sends
a batch and gathers the answers in any order. When several threads call at
once, one of them reads the socket at a time (leader/follower) and hands
every other thread its answer.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlunsplit

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidMessage, InvalidURI
from websockets.sync.client import ClientConnection, connect

from ..protocol import codec
from ..protocol.affinity import SESSION_HEADER, session_id_for
from ..protocol.errors import (
    ErrorCode,
    FrameTooLargeError,
    ProtocolError,
    RateLimitedError,
    RelayUnavailableError,
    RemoteRLError,
    RemoteTimeoutError,
    TLSError,
    error_from_wire,
)
from ..protocol.frames import DEFAULT_MAX_FRAME, HEADER_SIZE, MAX_SEQ, Kind, Op, pack, payload_of, unpack_header
from ..protocol.messages import Hello, Welcome, control_frame, parse_control
from ..rate_limited_log import RateLimitedLog
from .discovery import direct_route, split_relay_url
from .tls import client_context, expects_tls, tls_failure, warn_if_cleartext

log = logging.getLogger("remoterl.transport")
_peer_log = RateLimitedLog(log)

DIRECT_TIMEOUT = 3.0  # a replica address that does not answer by then is not reachable from here


def endpoint(relay_url: str) -> str:
    """``ws://host:port[/prefix]`` -> the relay's WebSocket endpoint ``.../ws``."""
    scheme, netloc, prefix, query = split_relay_url(relay_url)
    return urlunsplit((scheme, netloc, prefix + "/ws", query, ""))


@dataclass
class Reply:
    """One answer to a request: a RESPONSE payload, or the error it raised."""

    kind: int
    op: int
    channel: int
    payload: memoryview | None = None
    error: RemoteRLError | None = None

    def value(self) -> Any:
        if self.error is not None:
            raise self.error
        assert self.payload is not None
        return codec.unpackb(self.payload)


@dataclass
class _Slot:
    """A request in flight: what its answer must carry to be accepted."""

    channel: int
    op: int
    kind: int  # REQUEST (answered by the simulator owning ``channel``) or CONTROL (by the relay)
    reply: Reply | None = None

    def accepts(self, kind: int, op: int, channel: int) -> bool:
        """An answer on another channel, or for another op, is not this request's,
        whatever its seq says (a simulator can guess the seqs of other shards)."""
        if channel != self.channel or op != self.op:
            return False
        if self.kind == Kind.REQUEST:
            return kind == Kind.RESPONSE or kind == Kind.ERROR
        return kind == Kind.CONTROL or kind == Kind.ERROR


@dataclass
class Counters:
    bytes_sent: int = 0
    bytes_received: int = 0
    frames_sent: int = 0
    frames_received: int = 0


def closing_error(code: int, reason: str) -> RemoteRLError | None:
    """The typed error a relay closed us with (policy close, reason ``"<error code>: <message>"``)."""
    if code != 1008:
        return None
    error_code, _, message = reason.partition(": ")
    if error_code not in ErrorCode._value2member_map_:
        return None
    return error_from_wire({"code": error_code, "message": message})


def connect_error(url: str, exc: BaseException, ca_file: str | None, timeout: float) -> RemoteRLError:
    """What a failed WebSocket connect means: a final ``TLSError`` when TLS is
    the cause (an untrusted certificate, TLS on one side only), else an
    unreachable relay (``RelayUnavailableError``, dialled again with backoff)."""
    failure = tls_failure(url, exc, ca_file)
    if failure is None and exc.__cause__ is not None:  # a handshake error wrapping the TLS one
        failure = tls_failure(url, exc.__cause__, ca_file)
    if failure is None and isinstance(exc, InvalidMessage):  # no HTTP answer: a TLS port dialled as ws://?
        failure = expects_tls(url, min(timeout, DIRECT_TIMEOUT))
    return failure or RelayUnavailableError(f"cannot reach relay at {url}: {exc}")


class RelayConnection:
    """A connected, greeted WebSocket to the relay.

    ``on_control`` receives unsolicited CONTROL messages (events). It runs in
    whichever thread is reading, with the internal lock held: keep it short
    and never call back into the connection from it. An ERROR frame with seq
    0 means a channel died (its simulator left): requests on it then fail at
    once with that error.
    """

    def __init__(
        self, ws: ClientConnection, welcome: Welcome, *, on_control: Callable[[Any], None] | None = None
    ) -> None:
        self._ws = ws
        self.url = ""  # the WebSocket URL this connection reached
        self.welcome = welcome
        self.max_frame = welcome.max_frame
        self.on_control = on_control
        self.lost_channels: dict[int, RemoteRLError] = {}
        self.counters = Counters()
        self._seq = itertools.count(1)
        self._cond = threading.Condition()
        self._pending: dict[int, _Slot] = {}
        self._reading = False
        self._closed: RemoteRLError | None = None

    # -- connecting -------------------------------------------------------

    @classmethod
    def open(
        cls,
        relay_url: str,
        hello: Hello,
        *,
        timeout: float = 10.0,
        max_frame: int = DEFAULT_MAX_FRAME,
        ping_interval: float | None = 10.0,
        ping_timeout: float | None = 20.0,
        additional_headers: dict[str, str] | None = None,
        ca_file: str | None = None,
        **handlers: Any,
    ) -> RelayConnection:
        """Connect and greet once. Raises ``RelayUnavailableError`` if the relay
        cannot be reached, ``AuthenticationError``/``ProtocolVersionError`` if it
        refuses us, ``TLSError`` if a ``wss://`` relay's certificate fails
        verification (against ``ca_file``, else the system trust store) or only
        one side speaks TLS (those are final: retrying will not help).

        Sends the affinity header so that, under Ray Serve, every peer of one
        workspace reaches the same relay replica."""
        url = endpoint(relay_url)
        warn_if_cleartext(url, hello.api_key)
        headers = {SESSION_HEADER: session_id_for(hello.api_key), **(additional_headers or {})}
        try:
            ws = connect(
                url,
                ssl=client_context(ca_file) if url.startswith("wss://") else None,
                open_timeout=timeout,
                compression=None,
                max_size=max_frame + HEADER_SIZE,
                ping_interval=ping_interval,
                ping_timeout=ping_timeout,
                close_timeout=2,
                additional_headers=headers,
                proxy=None,
                legacy=True,  # a plain connection; reconnecting is ours (open_with_backoff)
            )
        except (OSError, InvalidHandshake, TimeoutError, InvalidURI) as exc:
            raise connect_error(url, exc, ca_file, timeout) from None
        try:
            ws.send(control_frame(hello))
            frame = ws.recv(timeout=timeout)
        except TimeoutError:
            ws.close()
            raise RelayUnavailableError(f"relay at {url} did not answer the hello within {timeout}s") from None
        except ConnectionClosed as exc:
            raise RelayUnavailableError(f"relay at {url} closed the connection during hello: {exc}") from None
        if isinstance(frame, str):
            ws.close()
            raise ProtocolError("relay answered the hello with a text frame")
        header = unpack_header(frame)
        payload = payload_of(frame)
        if header.kind == Kind.ERROR:
            ws.close()
            raise error_from_wire(codec.unpackb(payload))
        message = parse_control(payload)
        if not isinstance(message, Welcome):
            ws.close()
            raise ProtocolError(f"relay answered the hello with {message.op!r}")
        conn = cls(ws, message, **handlers)
        conn.url = url
        return conn

    @classmethod
    def open_routed(
        cls, relay_url: str, hello: Hello, *, timeout: float = 10.0, ca_file: str | None = None, **kwargs: Any
    ) -> RelayConnection:
        """:meth:`open`, dialling the relay replica directly when the relay offers
        its address (``GET /v1/route``) and it answers; else ``relay_url``.

        ``ca_file`` verifies both. A replica address whose certificate does not
        verify is skipped with a warning, for ``relay_url`` (itself verified, and
        never less secure: see ``keeps_security``); a TLS failure there is raised."""
        direct = direct_route(relay_url, hello.api_key, timeout=min(timeout, 5.0), ca_file=ca_file)
        if direct is not None:
            try:
                return cls.open(direct, hello, timeout=min(timeout, DIRECT_TIMEOUT), ca_file=ca_file, **kwargs)
            except RelayUnavailableError as exc:
                log.info("relay replica address %s not reachable (%s); using %s", direct, exc, relay_url)
            except TLSError as exc:
                log.warning("not dialling relay replica %s directly: %s; using %s", direct, exc, relay_url)
        return cls.open(relay_url, hello, timeout=timeout, ca_file=ca_file, **kwargs)

    @classmethod
    def open_with_backoff(
        cls,
        relay_url: str,
        hello: Hello,
        *,
        deadline: float | None,
        stop: threading.Event | None = None,
        first_delay: float = 0.1,
        max_delay: float = 5.0,
        announce: bool = False,
        **kwargs: Any,
    ) -> RelayConnection | None:
        """Retry :meth:`open_routed` with capped, jittered exponential backoff.

        Returns None when ``deadline`` (a ``time.monotonic()`` value) passes or
        ``stop`` is set. Refusals (bad key, bad version) and TLS failures (an
        untrusted certificate) are raised at once. ``announce``: say each
        failed attempt and the wait before the next (a process that only
        waits for the relay, such as a simulator, must not look dead).
        """
        delay = first_delay
        attempt = 0
        while True:
            attempt += 1
            try:
                return cls.open_routed(relay_url, hello, **kwargs)
            except RateLimitedError as exc:
                log.warning("%s", exc)
                reason: str = str(exc)
            except RelayUnavailableError as exc:
                log.debug("relay not reachable yet: %s", exc)
                reason = exc.message
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return None
            wait = delay * (0.5 + random.random())
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - now))
            if announce:
                log.warning("relay %s not reachable (attempt %d: %s); retrying in %.1fs", relay_url, attempt, reason, wait)
            if stop is not None:
                if stop.wait(wait):
                    return None
            else:
                time.sleep(wait)
            delay = min(delay * 2, max_delay)

    # -- sending ----------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def next_seq(self) -> int:
        seq = next(self._seq)
        if seq >= MAX_SEQ:  # wrap well before u32 overflow; old seqs are long answered
            self._seq = itertools.count(1)
            seq = next(self._seq)
        return seq

    def send(self, frame: bytes) -> None:
        if self._closed is not None:
            raise self._closed
        if len(frame) - HEADER_SIZE > self.max_frame:
            raise FrameTooLargeError(
                f"frame payload of {len(frame) - HEADER_SIZE} bytes exceeds the relay's limit of {self.max_frame}"
            )
        try:
            self._ws.send(frame)
        except ConnectionClosed as exc:
            self._mark_closed(exc)
            raise self._closed from None  # type: ignore[misc]
        self.counters.bytes_sent += len(frame)
        self.counters.frames_sent += 1

    # -- request / response ----------------------------------------------

    def call(self, requests: Iterable[tuple[int, int, int, bytes]], timeout: float) -> list[Reply]:
        """Send ``(kind, op, channel, payload)`` requests; return their replies in order.

        Each reply may carry an error instead of a payload (see ``Reply.value``);
        a reply missing after ``timeout`` seconds is a ``RemoteTimeoutError``.
        """
        pending = self.start(requests)
        return self.finish(pending, time.monotonic() + timeout, timeout)

    def start(self, requests: Iterable[tuple[int, int, int, bytes]]) -> list[tuple[int, _Slot]]:
        """Send requests without waiting; :meth:`finish` gathers the answers.

        Lets a caller put requests in flight on several connections (regions)
        before waiting on any of them.
        """
        slots: list[tuple[int, _Slot]] = []
        frames: list[bytes] = []
        with self._cond:
            if self._closed is not None:
                raise self._closed
            requests = list(requests)
            for _, _, channel, _ in requests:
                if channel in self.lost_channels:
                    raise self.lost_channels[channel]
            for kind, op, channel, payload in requests:
                seq = self.next_seq()
                slot = _Slot(channel, op, kind)
                self._pending[seq] = slot
                slots.append((seq, slot))
                frames.append(pack(kind, op, channel, seq, payload))
        try:
            for frame in frames:
                self.send(frame)
        except BaseException:
            self._forget(slots)
            raise
        return slots

    def finish(self, slots: list[tuple[int, _Slot]], deadline: float, timeout: float) -> list[Reply]:
        """Wait until ``deadline`` for the answers to :meth:`start`'s requests, in order."""
        try:
            self._pump(lambda: all(s.reply is not None for _, s in slots), deadline)
        finally:
            self._forget(slots)
        out: list[Reply] = []
        for _, slot in slots:
            if slot.reply is None:
                error = RemoteTimeoutError(f"no answer within {timeout}s on channel {slot.channel}")
                out.append(Reply(Kind.ERROR, Op.NONE, slot.channel, error=error))
            else:
                out.append(slot.reply)
        return out

    def _forget(self, slots: list[tuple[int, _Slot]]) -> None:
        with self._cond:
            for seq, _ in slots:
                self._pending.pop(seq, None)

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Process incoming frames until ``predicate()`` holds or ``timeout`` passes."""
        self._pump(predicate, time.monotonic() + timeout)
        with self._cond:
            return predicate()

    def recv(self, timeout: float | None) -> bytes | None:
        """Raw receive for a single-threaded peer (the simulator). None on timeout."""
        try:
            frame = self._ws.recv(timeout=timeout)
        except TimeoutError:
            return None
        except ConnectionClosed as exc:
            self._mark_closed(exc)
            raise self._closed from None  # type: ignore[misc]
        if isinstance(frame, str):
            frame = frame.encode()
        self.counters.bytes_received += len(frame)
        self.counters.frames_received += 1
        return frame

    def _pump(self, done: Callable[[], bool], deadline: float) -> None:
        """Leader/follower loop: read and dispatch frames until ``done()``."""
        with self._cond:
            while not done():
                if self._closed is not None:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                if self._reading:
                    self._cond.wait(remaining)
                    continue
                self._reading = True
                self._cond.release()
                try:
                    frame = self._ws.recv(timeout=remaining)
                    error = None
                except TimeoutError:
                    frame, error = None, None
                except ConnectionClosed as exc:
                    frame, error = None, exc
                finally:
                    self._cond.acquire()
                    self._reading = False
                if error is not None:
                    self._mark_closed(error)
                elif frame is not None:
                    self._dispatch(frame if isinstance(frame, bytes) else frame.encode())
                self._cond.notify_all()

    def _dispatch(self, frame: bytes) -> None:
        """Deliver one frame (lock held)."""
        self.counters.bytes_received += len(frame)
        self.counters.frames_received += 1
        try:
            kind, op, channel, seq = unpack_header(frame)
        except ProtocolError as exc:
            log.warning("dropping malformed frame from relay: %s", exc)
            return
        payload = payload_of(frame)
        slot = self._pending.get(seq) if seq else None
        if slot is not None and not slot.accepts(kind, op, channel):
            _peer_log.warning(
                "mismatched answer",
                "dropping an answer for seq %d that does not match its request (channel %d op %d, expected channel %d op %d)",
                seq, channel, op, slot.channel, slot.op,
            )  # fmt: skip
            return
        if kind == Kind.ERROR:
            try:
                error = error_from_wire(codec.unpackb(payload))
            except ProtocolError as exc:
                error = exc
            if slot is not None:
                slot.reply = Reply(kind, op, channel, error=error)
            elif channel:
                self._fail_channel(channel, error)
            else:
                log.warning("relay reported: %s", error)
        elif slot is not None:
            slot.reply = Reply(kind, op, channel, payload=payload)
        elif kind == Kind.CONTROL and self.on_control is not None:
            try:
                self.on_control(parse_control(payload))
            except ProtocolError as exc:
                log.warning("dropping malformed control message: %s", exc)
        # Anything else is a late answer to a request that already timed out.

    def _fail_channel(self, channel: int, error: RemoteRLError) -> None:
        self.lost_channels[channel] = error
        for slot in self._pending.values():
            if slot.channel == channel and slot.reply is None:
                slot.reply = Reply(Kind.ERROR, Op.NONE, channel, error=error)

    def _mark_closed(self, exc: BaseException | None = None, *, why: str | None = None) -> None:
        with self._cond:
            if self._closed is None:
                reason = f": {exc}" if exc else ""
                rcvd = exc.rcvd if isinstance(exc, ConnectionClosed) else None
                self._closed = (rcvd and closing_error(rcvd.code, rcvd.reason)) or RelayUnavailableError(
                    why or f"connection to the relay was lost{reason}"
                )
            for slot in self._pending.values():
                if slot.reply is None:
                    slot.reply = Reply(Kind.ERROR, Op.NONE, slot.channel, error=self._closed)
            self._cond.notify_all()

    def close(self) -> None:
        self._mark_closed(why="connection to the relay was closed (shutdown or env closed)")
        try:
            self._ws.close()
        except Exception:  # closing a dead socket may raise; nothing left to do
            pass

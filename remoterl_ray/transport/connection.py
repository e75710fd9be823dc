"""Layer 2: the synchronous driver of a relay connection, for trainers and simulators.

It only moves frames and waits: what they mean (the greeting, sequence ids,
matching answers to requests, lost channels, the frame limit, close reasons)
is :class:`~remoterl_ray.protocol.client_protocol.ClientProtocol`'s, the
sans-I/O core both peers share.

Built on :class:`~remoterl_ray.transport.websocket.WebSocket`, because
Gymnasium's API is synchronous: a caller sends and then reads its answers off
the socket in its own thread, with no event-loop or thread hop. Its keeper
thread answers WebSocket pings (our heartbeat) while the caller is busy in a
long env step or a gradient update.

Several requests can be in flight: :meth:`call` sends a batch and gathers the
answers in any order. When several threads call at once, one of them reads
the socket at a time (leader/follower) and hands every other thread its
answer.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlunsplit

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidMessage, InvalidURI

from ..protocol.affinity import SESSION_HEADER, session_id_for
from ..protocol.closing import CLOSE_MOVING, CLOSE_NORMAL
from ..protocol.client_protocol import (
    ChannelLost,
    ClientProtocol,
    Control,
    Dropped,
    Event,
    Pending,
    RelayReported,
    Reply,
)
from ..protocol.errors import (
    RateLimitedError,
    RelayUnavailableError,
    RemoteRLError,
    TLSError,
)
from ..protocol.frames import DEFAULT_MAX_FRAME, HEADER_SIZE
from ..protocol.limits import MAX_CLAIMS_PER_PEER, MAX_MESSAGE
from ..protocol.messages import Claim, Forget, Hello, Resume, Welcome, control_frame, resume_batches
from ..rate_limited_log import RateLimitedLog
from .discovery import direct_route, split_relay_url
from .tls import client_context, expects_tls, tls_failure, warn_if_cleartext
from .websocket import WebSocket

log = logging.getLogger("remoterl.transport")
_peer_log = RateLimitedLog(log)

DIRECT_TIMEOUT = 3.0  # a replica address that does not answer by then is not reachable from here
RESUME_MAX_DELAY = 1.0  # longest wait between dials while channels wait to resume (a relay restart takes seconds)


def endpoint(relay_url: str) -> str:
    """``ws://host:port[/prefix]`` -> the relay's WebSocket endpoint ``.../ws``."""
    scheme, netloc, prefix, query = split_relay_url(relay_url)
    return urlunsplit((scheme, netloc, prefix + "/ws", query, ""))


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

    ``on_control`` receives unsolicited CONTROL messages (events) while a
    trainer waits for answers. It runs in whichever thread is reading, with
    the internal lock held: keep it short and never call back into the
    connection from it. A simulator reads events itself (:meth:`next_event`).
    """

    def __init__(
        self, ws: WebSocket, protocol: ClientProtocol, *, on_control: Callable[[Any], None] | None = None
    ) -> None:
        assert protocol.welcome is not None, "the protocol must be greeted"
        self._ws = ws
        self.protocol = protocol
        self.url = ""  # the WebSocket URL this connection reached
        self.welcome: Welcome = protocol.welcome
        self.max_frame = protocol.max_frame
        self.on_control = on_control
        self.lost_channels = protocol.lost_channels
        self.counters = protocol.counters
        self._cond = threading.Condition()
        self._reading = False
        self._claimed: set[str] = set()  # resume tokens claimed on this connection

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
        seqs: Callable[[], int] | None = None,
        max_message: int = MAX_MESSAGE,
        **handlers: Any,
    ) -> RelayConnection:
        """Connect and greet once. Raises ``RelayUnavailableError`` if the relay
        cannot be reached, ``AuthenticationError``/``ProtocolVersionError`` if it
        refuses us, ``TLSError`` if a ``wss://`` relay's certificate fails
        verification (against ``ca_file``, else the system trust store) or only
        one side speaks TLS (those are final: retrying will not help).
        ``seqs``: where request seqs come from, ``max_message``: the largest
        message taken in (see ``ClientProtocol``).

        Sends the affinity header so that, under Ray Serve, every peer of one
        workspace reaches the same relay replica."""
        url = endpoint(relay_url)
        warn_if_cleartext(url, hello.api_key)
        headers = {SESSION_HEADER: session_id_for(hello.api_key), **(additional_headers or {})}
        try:
            ws = WebSocket.connect(
                url,
                ssl=client_context(ca_file) if url.startswith("wss://") else None,
                open_timeout=timeout,
                max_size=max_frame + HEADER_SIZE,
                ping_interval=ping_interval,
                ping_timeout=ping_timeout,
                additional_headers=headers,
            )
        except (OSError, InvalidHandshake, TimeoutError, InvalidURI) as exc:
            raise connect_error(url, exc, ca_file, timeout) from None
        protocol = ClientProtocol(hello, seqs, max_message)
        try:
            try:
                ws.send(protocol.hello_frame())
                frame = ws.recv(timeout=timeout)
            except TimeoutError:
                raise RelayUnavailableError(f"relay at {url} did not answer the hello within {timeout}s") from None
            except ConnectionClosed as exc:
                raise RelayUnavailableError(f"relay at {url} closed the connection during hello: {exc}") from None
            protocol.receive_welcome(frame)
        except BaseException:
            ws.close()  # whatever went wrong, the socket and its keeper end here
            raise
        conn = cls(ws, protocol, **handlers)
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
        while stop is None or not stop.is_set():
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
        return None

    # -- sending ----------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.protocol.close_error is not None

    def send(self, frame: bytes) -> None:
        """Send one frame the protocol made (or checks: its size against the relay's limit)."""
        self.send_many((frame,))

    def send_many(self, frames: Sequence[bytes]) -> None:
        """Send frames together, in one write where the socket takes it (see ``WebSocket.send_many``)."""
        self.protocol.check_open()
        for frame in frames:
            self.protocol.check_size(frame)
        try:
            self._ws.send_many(frames)
        except ConnectionClosed as exc:
            raise self._lost(exc) from None
        with self._cond:
            for frame in frames:
                self.protocol.sent(frame)

    # -- request / response ----------------------------------------------

    def call(self, requests: Iterable[tuple[int, int, int, bytes]], timeout: float) -> list[Reply]:
        """Send ``(kind, op, channel, payload)`` requests; return their replies in order.

        Each reply may carry an error instead of a payload (see ``Reply.value``);
        a reply missing after ``timeout`` seconds is a ``RemoteTimeoutError``.
        """
        pending = self.start(requests)
        return self.finish(pending, time.monotonic() + timeout, timeout)

    def start(self, requests: Iterable[tuple[int, int, int, bytes]]) -> list[Pending]:
        """Send requests without waiting; :meth:`finish` gathers the answers. Raises if
        none was sent; if the connection is lost while sending, the requests are
        returned, their replies saying so.

        Lets a caller put requests in flight on several connections (regions)
        before waiting on any of them.
        """
        pendings: list[Pending] = []
        frames: list[bytes] = []
        with self._cond:
            try:
                for kind, op, channel, payload in requests:
                    pending, more = self.protocol.request(kind, op, channel, payload)
                    pendings.append(pending)
                    frames += more
            except BaseException:
                self.protocol.forget(pendings)
                raise
        try:
            self.send_many(frames)
        except RelayUnavailableError:
            if self.protocol.close_error is None:
                self._forget(pendings)
                raise
            # Lost part way: some frames may have left. The replies say the connection was
            # lost; a resume sends these requests again with their seqs (never run twice).
        except BaseException:
            self._forget(pendings)
            raise
        return pendings

    def finish(self, pendings: list[Pending], deadline: float, timeout: float) -> list[Reply]:
        """Wait until ``deadline`` for the answers to :meth:`start`'s requests, in order."""
        try:
            self._pump(lambda: all(p.reply is not None for p in pendings), deadline)
        finally:
            self._forget(pendings)
        return [p.reply if p.reply is not None else self.protocol.timed_out(p, timeout) for p in pendings]

    def gather(self, pendings: list[Pending], deadline: float, enough: int) -> None:
        """Read until at least ``enough`` of ``pendings`` are answered (or ``deadline``);
        unlike :meth:`finish`, the rest stay in flight."""
        if enough >= len(pendings):
            self._pump(lambda: all(p.reply is not None for p in pendings), deadline)  # stops at the first missing
        else:
            self._pump(lambda: sum(p.reply is not None for p in pendings) >= enough, deadline)

    def forget(self, pendings: list[Pending]) -> None:
        """Stop waiting for these requests (their answers, if they come, are dropped)."""
        self._forget(pendings)

    # -- resuming (docs/protocol.md) ---------------------------------------

    def claim(
        self, claims: list[Claim], deadline: float, until: Callable[[], bool] | None = None
    ) -> dict[str, int]:
        """Claim channels by token and wait until ``deadline`` (or ``until()``) for the
        relay to pair them with their simulators' claims; returns token -> channel id
        for those paired (the rest stay claimed: :meth:`withdraw` them when giving up).
        Tokens already paired (claimed ahead) are not claimed again."""
        resumed = self.protocol.resumed
        with self._cond:
            new = [c for c in claims if c.token not in resumed]
            self._claimed.update(c.token for c in new)
        for batch in resume_batches(new):  # sent even if claimed before: it may have lapsed
            self.send(control_frame(Resume(channels=batch)))
        tokens = [c.token for c in claims]
        self._pump(lambda: all(t in resumed for t in tokens) or (until is not None and until()), deadline)
        with self._cond:
            paired = {t: resumed.pop(t) for t in tokens if t in resumed}
            self._claimed.difference_update(paired)  # a channel paused again is claimed anew
            return paired

    def claim_ahead(self, claims: list[Claim]) -> None:
        """Claim channels without waiting: their ``resumed`` waits here for :meth:`claim`.
        A token already paired, or already claimed on this connection, is not sent again
        (a claim lasts as long as the connection)."""
        with self._cond:
            new = [c for c in claims if c.token not in self.protocol.resumed and c.token not in self._claimed]
            room = MAX_CLAIMS_PER_PEER - len(self._claimed)
            new = new[: max(0, room)]
            self._claimed.update(c.token for c in new)
        for batch in resume_batches(new):
            self.send(control_frame(Resume(channels=batch)))

    def adopt_channels(self, channels: list[int]) -> None:
        """Channels this connection now carries (resumed here): the relay may pause them."""
        with self._cond:
            self.protocol.channels.update(channels)

    def withdraw(self, tokens: list[str]) -> None:
        """Withdraw claims (best effort: a claim also ends with its connection)."""
        with self._cond:
            self._claimed.difference_update(tokens)
        try:
            for batch in resume_batches(tokens):
                self.send(control_frame(Forget(tokens=batch)))
        except RemoteRLError as exc:
            log.debug("withdrawing resume claims: %s", exc)

    def give_up(self, channels: list[int], error: RemoteRLError) -> None:
        """Paused channels that did not resume: lost, every request on them ends in ``error``."""
        with self._cond:
            for channel in channels:
                self.protocol.fail_channel(channel, error)

    def resend(self, pendings: list[tuple[Pending, int]]) -> list[Pending]:
        """Requests again, each with its seq, on its channel's new id (``(pending,
        channel)`` pairs; the old pendings may be another connection's)."""
        news: list[Pending] = []
        frames: list[bytes] = []
        with self._cond:
            for pending, channel in pendings:
                new, more = self.protocol.resend(pending, channel)
                news.append(new)
                frames += more
        try:
            self.send_many(frames)
        except BaseException:
            self._forget(news)
            raise
        return news

    def limit_channels(self, limits: dict[int, int]) -> None:
        """The largest message each channel's simulator takes (0: one frame), from its description."""
        with self._cond:
            self.protocol.peer_limits.update(limits)

    def forget_channels(self, channels: list[int]) -> None:
        """Channels given back: drop what is awaited or remembered on them."""
        with self._cond:
            self.protocol.forget_channels(channels)

    def _forget(self, pendings: list[Pending]) -> None:
        with self._cond:
            self.protocol.forget(pendings)

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Process incoming frames until ``predicate()`` holds or ``timeout`` passes."""
        self._pump(predicate, time.monotonic() + timeout)
        with self._cond:
            return predicate()

    def next_event(self, timeout: float | None) -> Event | None:
        """The next event for a peer that reads its own frames (the simulator); None
        when nothing arrived within ``timeout``. Raises once the connection is lost."""
        self.protocol.check_open()
        try:
            frame = self._ws.recv(timeout=timeout)
        except TimeoutError:
            return None
        except ConnectionClosed as exc:
            raise self._lost(exc) from None
        with self._cond:
            return self.protocol.receive(frame)

    def _pump(self, done: Callable[[], bool], deadline: float) -> None:
        """Leader/follower loop: read and dispatch frames until ``done()``."""
        with self._cond:
            while not done():
                if self.protocol.close_error is not None:
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
                    self._lost(error)
                elif frame is not None:
                    self._handle(self.protocol.receive(frame))
                self._cond.notify_all()

    def _handle(self, event: Event | None) -> None:
        """What a trainer does with an event while it waits for answers (lock held)."""
        if event is None or isinstance(event, ChannelLost):
            return  # an answer (now on its request), or a channel the protocol marked lost
        if isinstance(event, Control):
            if self.on_control is not None:
                self.on_control(event.message)
        elif isinstance(event, Dropped):
            _peer_log.warning(event.what, "%s", event.detail)
        elif isinstance(event, RelayReported):
            log.warning("relay reported: %s", event.error)

    def _lost(self, exc: ConnectionClosed) -> RemoteRLError:
        """The socket closed under us: close the protocol with the relay's reason, wake every waiter."""
        with self._cond:
            rcvd = exc.rcvd
            error = self.protocol.connection_lost(
                rcvd.code if rcvd else None, rcvd.reason if rcvd else "", detail=f": {exc}"
            )
            self._cond.notify_all()
        return error

    def close(self, *, moving: bool = False) -> None:
        """Close: a goodbye (the relay ends this connection's channels), or ``moving``
        to another relay replica (close code 1001: they wait to resume there)."""
        with self._cond:
            self.protocol.close()
            self._cond.notify_all()
        try:
            self._ws.close(CLOSE_MOVING if moving else CLOSE_NORMAL)
        except Exception:  # closing a dead socket may raise; nothing left to do
            pass

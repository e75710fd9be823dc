"""Layer 5: the simulator process. Dials out to the relay and serves envs.

Single-threaded on purpose: requests are handled in arrival order in the
calling thread (Gymnasium envs are rarely thread-safe), while the websockets
library's own thread keeps the heartbeat going during long steps. When the
relay connection drops, the host reconnects with capped exponential backoff;
envs made with a resume token stay suspended meanwhile and are claimed again
on the new connection, so their trainers carry on where they were, for up to
``resume_window`` seconds (``docs/protocol.md``, resuming). A request sent
again after a resume is answered from the channel's answer memory, never run
twice. Before each connection it picks the relay region with the lowest
round-trip time (or the one named by ``region``).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from typing import Any

from ..protocol import codec
from ..protocol.client_protocol import Control, Dropped, Event, RelayReported, Request, Unreadable
from ..protocol.errors import (
    ErrorCode,
    FrameTooLargeError,
    ProtocolError,
    RelayUnavailableError,
    RemoteEnvError,
    RemoteRLError,
    exception_type_name,
)
from ..protocol.frames import Op
from ..protocol.limits import MAX_MESSAGE, PLAIN_DECODE, RESUME_WINDOW
from ..protocol.messages import (
    CAP_NOTICE,
    CAP_RECONNECT,
    CAP_RESUME,
    Claim,
    Detach,
    Forget,
    Hello,
    Notice,
    Paused,
    Reconnect,
    Resume,
    Resumed,
    control_frame,
    resume_batches,
)
from ..protocol.replay import Answer
from ..rate_limited_log import RateLimitedLog
from ..transport import RelayConnection
from ..transport.connection import RESUME_MAX_DELAY
from ..transport.discovery import RegionsUnavailableError, UnknownRegionError, choose_region
from .allowlist import Allowlist
from .hosted import EnvTable

log = logging.getLogger("remoterl.simulator")
_relay_log = RateLimitedLog(log)

MAX_MAKE_BYTES = 65_536  # make/register requests: env ids, kwargs and specs are small
_MAKING = frozenset({Op.MAKE, Op.MAKE_VEC, Op.REGISTER})
POLL_SECONDS = 0.25  # how often an idle simulator checks for a stop request
REPICK_SECONDS = 30.0  # a region unreachable this long is given up for the nearest other one


class Connection(Enum):
    """What the simulator does with its current relay connection."""

    STAY = "stay"
    MOVE_WHEN_IDLE = "move when idle"  # the relay asked us to dial again: once no channel is live


class SimulatorHost:
    def __init__(
        self,
        relay_url: str,
        api_key: str | None,
        *,
        allow_modules: list[str] | tuple[str, ...] = (),
        max_envs: int = 256,
        name: str | None = None,
        region: str | None = None,
        ca_file: str | None = None,
        allow_processes: bool = False,
        allow_attributes: bool = True,
        max_make_bytes: int = MAX_MAKE_BYTES,
        resume_window: float = RESUME_WINDOW,
        max_message: int = MAX_MESSAGE,
    ) -> None:
        """``ca_file``: PEM CA certificates a ``wss://`` relay is verified with
        (None: the system trust store). ``allow_processes``: trainers may ask for
        async vector envs (a process per env). ``allow_attributes``: trainers may
        call public env methods and get or set public attributes. ``max_make_bytes``: the largest
        make or register request (their kwargs reach env constructors). ``resume_window``:
        seconds an env whose trainer or relay connection dropped waits to resume (0: none
        waits; channels end when a connection drops, as before resuming existed).
        ``max_message``: the largest request taken in, however many chunks it came in."""
        self.relay_url = relay_url
        self.ca_file = ca_file
        self.region = region  # None: the nearest one
        self.api_key = api_key
        self.max_make_bytes = max_make_bytes
        self.max_message = max_message
        self.table = EnvTable(
            Allowlist(allow_modules),
            max_envs,
            allow_processes=allow_processes,
            allow_attributes=allow_attributes,
            max_message=max_message,
        )
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.max_envs = max_envs
        self.resume_window = resume_window
        self.connection = Connection.STAY
        self._last_url: str | None = None  # the region URL of the last connection that worked

    def hello(self) -> Hello:
        return Hello(
            role="simulator",
            api_key=self.api_key,
            name=self.name,
            max_envs=self.max_envs,
            capabilities=[CAP_RECONNECT, CAP_NOTICE, *([CAP_RESUME] if self.resume_window > 0 else [])],
        )

    def serve(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set. Raises ``AuthenticationError`` for a bad key,
        ``TLSError`` for a relay certificate it cannot verify."""
        while not stop.is_set():
            gone = self.table.expire(self.resume_window)  # also while the relay cannot be reached
            if gone:
                log.warning("closed the envs of %d channels that did not resume within %gs", len(gone),
                            self.resume_window)  # fmt: skip
            url = self.pick_url(stop)
            if url is None:
                break
            conn = RelayConnection.open_with_backoff(
                url,
                self.hello(),
                deadline=min(  # back in time to close suspended envs whose window runs out
                    time.monotonic() + REPICK_SECONDS, self.table.next_expiry(self.resume_window) or float("inf")
                ),
                max_delay=RESUME_MAX_DELAY if self.table.suspended else 5.0,
                stop=stop,
                timeout=5.0,
                ca_file=self.ca_file,
                max_message=self.max_message,
                announce=True,
            )
            if conn is None:
                continue  # that region stayed unreachable: choose again (or stop)
            if self._last_url is None and conn.welcome.quota is not None:
                print(conn.welcome.quota.banner(conn.welcome.workspace), file=sys.stderr, flush=True)
            self._last_url = url
            # Said, not logged at INFO: the line a person waits for after starting a simulator.
            print(
                f"simulator {self.name} online at {url} (region {conn.welcome.region or '-'}, "
                f"workspace {conn.welcome.workspace})",
                file=sys.stderr,
                flush=True,
            )
            # Make and register requests reach env constructors: refused past their own bound
            # from the size a chunked one announces, before it is read.
            conn.protocol.request_limits.update(dict.fromkeys(_MAKING, self.max_make_bytes))
            try:
                self._claim(conn, self.table.claims())
                self._serve_connection(conn, stop)
            except RelayUnavailableError as exc:
                log.warning("lost the relay (%s); reconnecting", exc)
            finally:
                if stop.is_set() or self.resume_window <= 0:
                    self.table.close_all()
                else:
                    self.table.suspend(list(self.table.by_channel))
                conn.close(moving=not stop.is_set())  # a goodbye only when stopping

    def pick_url(self, stop: threading.Event) -> str | None:
        """The relay URL to dial now: the named or the nearest region of ``relay_url``.

        While the region list cannot be fetched, the last region that worked is
        dialled again (or the list is retried with backoff); a region name the
        relay does not know is an error at start-up only. None once ``stop`` is set.
        """
        if self.table.suspended and self._last_url is not None:
            return self._last_url  # suspended envs are claimed where their trainers will look for them
        delay = 0.1
        while not stop.is_set():
            try:
                return choose_region(self.relay_url, self.region, ca_file=self.ca_file).url
            except UnknownRegionError as exc:
                if self._last_url is None:
                    raise
                log.warning("%s; dialling the last region that worked", exc)
                return self._last_url
            except RegionsUnavailableError as exc:
                if self._last_url is not None:
                    return self._last_url
                log.debug("%s; retrying", exc)
            stop.wait(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)
        return None

    def _serve_connection(self, conn: RelayConnection, stop: threading.Event) -> None:
        self.connection = Connection.STAY
        while not stop.is_set():
            event = conn.next_event(POLL_SECONDS)
            if event is not None:
                self.handle(conn, event)
            if self.table.suspended:
                self._expire(conn)
            if self.connection is Connection.MOVE_WHEN_IDLE and not self.table.by_channel:
                # Suspended envs move along: they are claimed again on the new connection.
                log.info("relay asked us to reconnect; dialing again")
                return

    def _claim(self, conn: RelayConnection, claims: list[Claim]) -> None:
        """Claim suspended envs' channels (those past the window are closed first)."""
        self._expire(conn)
        live = {c.token for c in self.table.claims()}
        claims = [c for c in claims if c.token in live]
        for batch in resume_batches(claims):
            conn.send(control_frame(Resume(channels=batch)))

    def _expire(self, conn: RelayConnection) -> None:
        gone = self.table.expire(self.resume_window)
        if gone:
            log.warning(
                "closed the envs of %d channels whose trainers did not resume within %gs", len(gone), self.resume_window
            )
            for batch in resume_batches(gone):
                conn.send(control_frame(Forget(tokens=batch)))

    def handle(self, conn: RelayConnection, event: Event) -> None:
        if isinstance(event, Request):
            answer = self._recall_or_run(conn, event)
            hosted = self.table.by_channel.get(event.channel)
            limit = hosted.peer_max_message if hosted is not None else 0
            frames = conn.protocol.answer(event.op, event.channel, event.seq, answer.body, answer.error, limit)
            try:
                conn.send_many(frames)
            except FrameTooLargeError as exc:  # never ends serving: say so in a frame that fits
                conn.send_many(conn.protocol.answer(event.op, event.channel, event.seq, None, exc.to_wire()))
        elif isinstance(event, Unreadable):  # a chunked request refused before it was read
            conn.send_many(conn.protocol.answer(event.op, event.channel, event.seq, None, event.error.to_wire()))
        elif isinstance(event, Control):
            message = event.message
            if isinstance(message, Paused):
                self._claim(conn, self.table.suspend(message.channels))
            elif isinstance(message, Resumed):
                for rebound in message.channels:
                    self.table.rebind(rebound.token, rebound.channel)
            elif isinstance(message, Detach):
                self.table.close(message.channel)
            elif isinstance(message, Reconnect):
                self.connection = Connection.MOVE_WHEN_IDLE
            elif isinstance(message, Notice):
                log.warning("remoterl: %s", message.message)
        elif isinstance(event, Dropped):
            _relay_log.warning(event.what, "%s", event.detail)
        elif isinstance(event, RelayReported):
            _relay_log.warning(
                "relay error", "relay reported an error on channel %s: %s", event.channel, event.error
            )

    def _recall_or_run(self, conn: RelayConnection, request: Request) -> Answer:
        """The answer a resumable channel already gave ``request.seq`` (sent again after
        a resume), else the request run now (and remembered)."""
        hosted = self.table.by_channel.get(request.channel)
        memory = hosted.memory if hosted is not None else None
        if memory is not None:
            try:
                remembered = memory.recall(request.seq)
            except RemoteRLError as exc:
                return Answer(request.op, None, exc.to_wire())
            if remembered is not None:
                return remembered
        answer = Answer(request.op, *self._answer(conn, request))
        if memory is not None:
            memory.remember(request.seq, answer)
        return answer

    def _answer(self, conn: RelayConnection, request: Request) -> tuple[bytes | None, dict[str, Any] | None]:
        """(body, None) or (None, wire error): the env's answer, or why there is none."""
        op, payload = request.op, request.payload
        try:
            if op in _MAKING and len(payload) > self.max_make_bytes:
                raise ProtocolError(
                    f"{Op(op).name.lower()} request of {len(payload)} bytes exceeds this simulator's limit of "
                    f"{self.max_make_bytes} (--max-make-bytes)",
                    code=ErrorCode.BAD_PAYLOAD,
                )
            arg = codec.unpackb(payload, PLAIN_DECODE)  # requests travel raw: none may expand
            return self.table.answer(op, request.channel, arg, max_bytes=conn.max_frame), None
        except RemoteRLError as exc:
            return None, exc.to_wire()
        except Exception as exc:  # the env raised: report it, keep serving
            return None, RemoteEnvError(str(exc), remote_type=exception_type_name(type(exc))).to_wire()


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set ``stop`` on SIGINT/SIGTERM while inside; restore the handlers after.

    Only the main thread may install signal handlers; elsewhere this is a no-op
    and the caller stops the host through ``stop`` directly.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum: int, _frame: Any) -> None:
        log.info("received signal %s; stopping", signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_simulator(host: SimulatorHost, stop: threading.Event | None = None) -> None:
    """Block serving envs until Ctrl-C / SIGTERM (or ``stop``)."""
    stop = stop or threading.Event()
    started = time.monotonic()
    with stop_on_signals(stop):
        host.serve(stop)
    log.info("simulator stopped after %.1fs", time.monotonic() - started)

"""Layer 6: a trainer's connections to the relay, and what the relay tells them.

One connection to the relay URL the trainer was given (the home link), and
one more per region whose simulators the trainer's envs use. The relay tells
the home link how many of the workspace's simulators are online, asks it to
dial again when its workspace moves to another replica, and says where the
simulators are (``locate``). Making envs over these links is
``TrainerSession``'s.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import weakref
from enum import Enum
from typing import Any

from ..protocol.errors import ProtocolError, RelayUnavailableError
from ..protocol.frames import Kind, Op
from ..protocol.messages import (
    CAP_LOCATE,
    CAP_NOTICE,
    CAP_RECONNECT,
    CAP_RESUME,
    Hello,
    Locate,
    Notice,
    Reconnect,
    Region,
    Regions,
    Simulators,
    encode_control,
    parse_control,
)
from ..protocol.replay import SeqCounter
from ..transport import RelayConnection
from ..transport.connection import RESUME_MAX_DELAY
from .settings import TrainerSettings

log = logging.getLogger("remoterl.trainer")


class Home(Enum):
    """The home link's state. Any state but ``CLOSED`` dials again when its
    connection is found lost."""

    CONNECTED = "connected"
    MOVE_ASKED = "move asked"  # the relay asked us to dial again (another replica serves us): at the next use
    CLOSED = "closed"  # shut down: nothing is dialled again


class RelayLinks:
    def __init__(self, settings: TrainerSettings) -> None:
        self.settings = settings
        self.simulators = 0  # of our workspace, online in our region (the relay's last word)
        self.state = Home.CONNECTED
        self._home: RelayConnection | None = None
        self._regional: dict[str, RelayConnection] = {}  # other regions, by name
        self._region_of: weakref.WeakKeyDictionary[RelayConnection, Region] = weakref.WeakKeyDictionary()
        self.seqs = SeqCounter()  # one for every connection: a resumed channel's seqs keep growing
        self._lock = threading.Lock()  # the connections (held while dialling and closing)
        self._state_lock = threading.Lock()  # ``state`` only, never held while taking another lock
        self._closing = threading.Event()  # set first by close(): a dial in progress gives up

    def _move(self, old: Home, new: Home) -> bool:
        """``state`` from ``old`` to ``new``, if it still is ``old``."""
        with self._state_lock:
            if self.state is not old:
                return False
            self.state = new
            return True

    @property
    def closed(self) -> bool:
        return self.state is Home.CLOSED or self._closing.is_set()

    def _on_control(self, message: Any) -> None:
        """Runs in the thread reading the home connection, with that connection's lock held."""
        if isinstance(message, Simulators):
            self.simulators = message.count
        elif isinstance(message, Reconnect):
            self._move(Home.CONNECTED, Home.MOVE_ASKED)  # a shut-down session stays shut down
        elif isinstance(message, Notice):
            log.warning("remoterl: %s", message.message)

    def _open(self, url: str, timeout: float, *, max_delay: float = 5.0, **handlers: Any) -> RelayConnection | None:
        resume = [CAP_RESUME] if self.settings.resume_window > 0 else []
        return RelayConnection.open_with_backoff(
            url,
            Hello(
                role="trainer",
                api_key=self.settings.api_key,
                name=f"{socket.gethostname()}:{os.getpid()}",  # shown on the operator dashboard
                capabilities=[CAP_RECONNECT, CAP_NOTICE, *resume],
            ),
            deadline=time.monotonic() + timeout,
            max_delay=max_delay,
            timeout=min(timeout, 10.0) or 1.0,
            ca_file=self.settings.ca_file,
            seqs=self.seqs,
            max_message=self.settings.max_message,
            stop=self._closing,
            **handlers,
        )

    def connect(self, timeout: float | None = None, max_delay: float = 5.0) -> RelayConnection | None:
        """Connect the home link (retrying until ``timeout``, at most ``max_delay`` apart);
        None if the relay is unreachable."""
        timeout = self.settings.connect_timeout if timeout is None else timeout
        conn = self._open(self.settings.relay_url, timeout, max_delay=max_delay, on_control=self._on_control)
        if conn is not None:
            self.simulators = conn.welcome.simulators
            self._home = conn
        return conn

    @property
    def conn(self) -> RelayConnection:
        """The home link's live connection; dials again once if the relay dropped it,
        or asked us to move while we held no channel there."""
        return self._home_conn(self.settings.connect_timeout)

    def _home_conn(self, timeout: float, max_delay: float = 5.0) -> RelayConnection:
        with self._lock:
            if self.closed:
                raise RelayUnavailableError("this trainer session was shut down")
            if self._move(Home.MOVE_ASKED, Home.CONNECTED) and self._home is not None:
                log.info("relay moved this workspace to another replica; reconnecting")
                self._home.close(moving=True)
            if self._home is None or self._home.closed:
                if self.connect(timeout, max_delay) is None:
                    raise RelayUnavailableError(f"cannot reach the relay at {self.settings.relay_url}")
            assert self._home is not None
            return self._home

    def asked_to_move(self, conn: RelayConnection) -> bool:
        """The relay asked ``conn`` (the home link or a region's) to dial again: another
        replica serves us."""
        return conn.protocol.move_asked or (conn is self._home and self.state is Home.MOVE_ASKED)

    def replace(self, lost: RelayConnection, deadline: float) -> RelayConnection:
        """The live connection to where ``lost`` led (the home link, or its region),
        dialling until ``deadline`` if nobody has yet (or if the relay asked the home
        link to move). Raises ``RelayUnavailableError``."""
        region = self._region_of.get(lost)
        left = max(0.0, deadline - time.monotonic())
        if region is None:
            return self._home_conn(left, RESUME_MAX_DELAY)
        return self._region_conn(region, left, RESUME_MAX_DELAY)

    def region_conn(self, region: Region) -> RelayConnection:
        """The connection to ``region`` (``url`` None: the home link's)."""
        if region.url is None:
            return self.conn
        return self._region_conn(region, self.settings.connect_timeout)

    def _region_conn(self, region: Region, timeout: float, max_delay: float = 5.0) -> RelayConnection:
        assert region.url is not None
        with self._lock:
            if self.closed:
                raise RelayUnavailableError("this trainer session was shut down")
            conn = self._regional.get(region.name)
            if conn is not None and not conn.closed and conn.protocol.move_asked:
                log.info("relay moved this workspace to another replica of region %s; reconnecting", region.name)
                conn.close(moving=True)
            if conn is None or conn.closed:
                conn = self._open(region.url, timeout, max_delay=max_delay)
                if conn is None:
                    raise RelayUnavailableError(f"cannot reach region {region.name} at {region.url}")
                self._regional[region.name] = conn
                self._region_of[conn] = region
            return conn

    def locate(self) -> list[Region]:
        """Every region, with how many of our workspace's simulators are online there."""
        if CAP_LOCATE not in self.conn.welcome.capabilities:  # a relay from before regions
            return [Region(name=self.conn.welcome.region, url=None, simulators=self.simulators)]
        reply = self.conn.call([(Kind.CONTROL, Op.NONE, 0, encode_control(Locate()))], self.settings.timeout)[0]
        if reply.error is not None:
            raise reply.error
        message = parse_control(reply.payload)
        if not isinstance(message, Regions):
            raise ProtocolError(f"relay answered locate with {message.op!r}")
        return message.regions

    def wait_for_simulators(self, count: int, timeout: float) -> int:
        """Wait until ``count`` simulators of our workspace are online in any region."""
        deadline = time.monotonic() + timeout
        while True:
            online = sum(r.simulators for r in self.locate())
            remaining = deadline - time.monotonic()
            if online >= count or remaining <= 0:
                self.simulators = online
                return online
            # Simulator events from our own region wake us early; other regions are polled.
            self.conn.wait_until(lambda: self.simulators >= count, min(remaining, 0.5))

    def byte_counts(self) -> tuple[int, int]:
        """Bytes sent and received over the live connections."""
        conns = [c for c in (self._home, *self._regional.values()) if c is not None]
        return sum(c.counters.bytes_sent for c in conns), sum(c.counters.bytes_received for c in conns)

    def close(self) -> None:
        self._closing.set()  # a resume dialling (with the lock held) stops at once
        with self._lock:
            with self._state_lock:
                self.state = Home.CLOSED
            for conn in self._regional.values():
                conn.close()
            self._regional.clear()
            if self._home is not None:
                self._home.close()
                self._home = None

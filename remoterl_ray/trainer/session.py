"""Layer 6: the trainer's session with the relay.

Owns the connection, knows how many simulators are online, asks the relay
for channels, and creates remote envs on simulators (mirroring registrations
first). ``RemoteEnv`` and ``RemoteVectorEnv`` are thin views over it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..protocol import codec
from ..protocol.errors import ProtocolError, RelayUnavailableError, RemoteRLError
from ..protocol.frames import Kind, Op
from ..protocol.messages import (
    Hello,
    Open,
    Opened,
    Release,
    Shard,
    Simulators,
    control_frame,
    encode_control,
    parse_control,
)
from ..transport import RelayConnection
from .metrics import RemoteMetrics

log = logging.getLogger("remoterl.trainer")


@dataclass(frozen=True)
class TrainerSettings:
    relay_url: str
    api_key: str | None = field(repr=False)  # settings travel in RLlib configs, which get logged
    num_workers: int = 1
    num_env_runners: int = 2
    timeout: float = 60.0  # per request (step, reset, ...)
    make_timeout: float = 120.0  # creating envs may load heavy simulators
    connect_timeout: float = 10.0
    simulator_wait: float = 10.0
    tensorboard_dir: str | None = None  # remote-env metrics as TensorBoard scalars
    metrics_interval: float = 5.0  # seconds between TensorBoard points


@dataclass
class Registration:
    """A mirrored ``gym.register`` call, sent to simulators before a make."""

    id: str
    entry_point: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "entry_point": self.entry_point, "kwargs": self.kwargs, "spec": self.spec}


class TrainerSession:
    def __init__(self, settings: TrainerSettings) -> None:
        self.settings = settings
        self.registrations: dict[str, Registration] = {}
        self.unmirrored: dict[str, str] = {}  # id -> why its registration stayed local
        self._descriptions: dict[bytes, dict[str, Any]] = {}
        self.simulators = 0
        self.metrics = RemoteMetrics()
        self._conn: RelayConnection | None = None
        self._lock = threading.Lock()
        self._tensorboard: Any = None
        self._next_write = 0.0
        if settings.tensorboard_dir:
            from .tensorboard import ScalarWriter  # imported only when asked for

            self._tensorboard = ScalarWriter(settings.tensorboard_dir)

    # -- connection -------------------------------------------------------

    def _on_control(self, message: Any) -> None:
        if isinstance(message, Simulators):
            self.simulators = message.count

    def connect(self, timeout: float | None = None) -> RelayConnection | None:
        """Connect (retrying until ``timeout``); None if the relay is unreachable."""
        timeout = self.settings.connect_timeout if timeout is None else timeout
        conn = RelayConnection.open_with_backoff(
            self.settings.relay_url,
            Hello(role="trainer", api_key=self.settings.api_key),
            deadline=time.monotonic() + timeout,
            timeout=min(timeout, 10.0) or 1.0,
            on_control=self._on_control,
        )
        if conn is not None:
            self.simulators = conn.welcome.simulators
            self._conn = conn
        return conn

    @property
    def conn(self) -> RelayConnection:
        """The live connection; reconnects once if the relay dropped it."""
        with self._lock:
            if self._conn is None or self._conn.closed:
                if self.connect() is None:
                    raise RelayUnavailableError(f"cannot reach the relay at {self.settings.relay_url}")
            assert self._conn is not None
            return self._conn

    def wait_for_simulators(self, count: int, timeout: float) -> int:
        conn = self.conn
        conn.wait_until(lambda: self.simulators >= count, timeout)
        return self.simulators

    # -- metrics ----------------------------------------------------------

    def record_step(self, seconds: float, env_steps: int) -> None:
        """Called after every remote step; writes TensorBoard points now and then."""
        self.metrics.record(seconds, env_steps)
        if self._tensorboard is not None:
            now = time.monotonic()
            if now >= self._next_write:
                self._next_write = now + self.settings.metrics_interval
                self._write_tensorboard()

    def metrics_snapshot(self) -> dict[str, float]:
        conn = self._conn
        return self.metrics.snapshot(
            bytes_sent=conn.counters.bytes_sent if conn is not None else 0,
            bytes_received=conn.counters.bytes_received if conn is not None else 0,
            simulators=self.simulators,
        )

    def _write_tensorboard(self) -> None:
        self._tensorboard.write(self.metrics.total_env_steps, self.metrics_snapshot())

    def close(self) -> None:
        if self._tensorboard is not None:
            self._write_tensorboard()
            self._tensorboard.close()
            self._tensorboard = None
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- env lifecycle ----------------------------------------------------

    def create(
        self, env_id: str, num_envs: int, make_arg: dict[str, Any], *, vector: bool
    ) -> list[tuple[Shard, dict[str, Any]]]:
        """Open channels for ``num_envs`` envs and make them on the simulators.

        Returns each shard with the simulator's description of its env
        (spaces, metadata, spec). On any failure every channel is released.
        """
        conn = self.conn
        request = Open(envs=num_envs, per_simulator=self.settings.num_env_runners)
        reply = conn.call([(Kind.CONTROL, Op.NONE, 0, encode_control(request))], self.settings.timeout)[0]
        if reply.error is not None:
            raise reply.error
        opened = parse_control(reply.payload)
        if not isinstance(opened, Opened):
            raise ProtocolError(f"relay answered an open with {opened.op!r}")
        shards = opened.shards
        try:
            requests = []
            registration = self.registrations.get(env_id)
            first_index = 0
            for shard in shards:
                if registration is not None:
                    requests.append((Kind.REQUEST, Op.REGISTER, shard.channel, codec.packb(registration.to_wire())))
                arg = dict(make_arg, id=env_id)
                if vector:
                    arg["num_envs"] = shard.envs
                    arg["first_index"] = first_index  # where this shard's envs sit in the whole vector
                    first_index += shard.envs
                requests.append((Kind.REQUEST, Op.MAKE_VEC if vector else Op.MAKE, shard.channel, codec.packb(arg)))
            replies = conn.call(requests, self.settings.make_timeout)
            for reply in replies:  # registration errors come first, then make errors
                reply.value()
            descriptions = [r.value() for r in replies if r.op in (Op.MAKE, Op.MAKE_VEC)]
        except BaseException:
            self.release(conn, [s.channel for s in shards], close_first=True)
            raise
        return list(zip(shards, descriptions))

    def describe(self, env_id: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """What a simulator reports about ``make(env_id, **kwargs)`` (spaces,
        metadata, spec), from one throwaway env; cached per id and kwargs."""
        key = codec.packb([env_id, kwargs])
        description = self._descriptions.get(key)
        if description is None:
            conn = self.conn
            [(shard, description)] = self.create(env_id, 1, {"kwargs": kwargs}, vector=False)
            self.release(conn, [shard.channel], close_first=True)
            self._descriptions[key] = description
        return description

    def release(self, conn: RelayConnection, channels: list[int], *, close_first: bool = False) -> None:
        """Close the envs on ``channels`` (best effort) and give the channels back."""
        if conn.closed or not channels:
            return
        live = [ch for ch in channels if ch not in conn.lost_channels]
        try:
            if close_first and live:
                requests = [(Kind.REQUEST, Op.CLOSE, ch, codec.packb(None)) for ch in live]
                conn.call(requests, min(self.settings.timeout, 10.0))
            conn.send(control_frame(Release(channels=channels)))
        except RemoteRLError as exc:
            log.debug("releasing channels %s: %s", channels, exc)

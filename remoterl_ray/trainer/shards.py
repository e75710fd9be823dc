"""The channels behind one remote env, and requests over them.

Both ``RemoteEnv`` (one shard) and ``RemoteVectorEnv`` (one shard per
simulator) keep the connection each shard was created on (shards in other
regions live on other connections). If the relay drops one (a relay
restart, a Serve replica removed by a downscale or redeploy), the channels
are gone with it: the envs are made again on a fresh connection and
``ShardsRebuilt`` tells the env class that every episode just ended, which
it reports as truncation. If that fails, the call raises the connection's
``RelayUnavailableError``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from gymnasium.envs.registration import EnvSpec

from ..protocol import codec
from ..protocol.errors import EnvClosedError, RelayUnavailableError, RemoteRLError
from ..protocol.frames import Kind, Op
from ..protocol.messages import Shard
from ..transport import RelayConnection, Reply
from .session import Made, TrainerSession, group_channels
from .specs import remote_spec

log = logging.getLogger("remoterl.trainer")


class ShardsRebuilt(RelayUnavailableError):
    """The relay connection was lost and the envs were made again: their episodes
    ended and the new envs need a reset (``Shards.needs_reset``). The env classes
    turn this into truncation; should it ever escape, it is a coded ``relay_gone``."""


SKIP = object()  # in ``Shards.request`` args: nothing is sent to that shard, and SKIP is its answer


class Shards:
    def __init__(
        self,
        session: TrainerSession,
        env_id: str,
        num_envs: int,
        make_arg: dict[str, Any],
        *,
        vector: bool,
        whole: bool = False,
    ):
        """``whole``: all envs on one simulator (a vector env that vectorises inside
        one object cannot be cut into shards)."""
        self.session = session
        self.env_id = env_id
        self.num_envs = num_envs
        self.vector = vector
        self.whole = whole
        self.needs_reset = False  # made again after a lost connection, not reset since
        self._make = make_arg
        made = session.create(env_id, num_envs, make_arg, vector=vector, whole=whole)
        if len(made) > 1 and any(m.description.vectorization_mode == "vector_entry_point" for m in made):
            # The simulators chose the env's vector entry point (the id is unknown here): make it whole.
            for conn, channels in group_channels(made):
                session.release(conn, channels, close_first=True)
            self.whole = True
            made = session.create(env_id, num_envs, make_arg, vector=vector, whole=True)
        self._adopt(made)
        self.description = made[0].description
        self.observation_space = self.description.observation_space
        self.action_space = self.description.action_space
        for other in (m.description for m in made[1:]):
            if (other.observation_space, other.action_space) != (self.observation_space, self.action_space):
                log.warning("simulators of %s report different spaces; using the first one's", env_id)
        self.closed = False

    def _adopt(self, made: list[Made]) -> None:
        self.made = made
        self.shards: list[Shard] = [m.shard for m in made]
        self.channels = [s.channel for s in self.shards]
        self.conns = [m.conn for m in made]
        regions = {id(conn) for conn in self.conns}
        self.single_conn: RelayConnection | None = self.conns[0] if len(regions) == 1 else None
        self.sizes = [s.envs for s in self.shards]
        self.bounds = []
        start = 0
        for size in self.sizes:
            self.bounds.append((start, start + size))
            start += size

    def _rebuild(self, lost: RelayUnavailableError) -> None:
        """Make the envs again on a fresh connection; raises ``ShardsRebuilt``, or ``lost`` if that fails."""
        log.warning("lost the relay connection of %s (%s); making its envs again", self.env_id, lost)
        for conn, channels in group_channels(self.made):
            self.session.release(conn, channels)  # channels on a live connection (another region) go back
        try:
            self.session.wait_for_simulators(1, self.session.settings.simulator_wait)
            self._adopt(
                self.session.create(self.env_id, self.num_envs, self._make, vector=self.vector, whole=self.whole)
            )
        except RemoteRLError as exc:
            raise lost from exc
        log.warning("%s is served again (%s); its episodes were truncated", self.env_id, self.sizes)
        self.needs_reset = True
        raise ShardsRebuilt(f"{lost}; the envs were made again on a new connection")

    def spec(self) -> EnvSpec | None:
        """The env's spec, as a local ``make`` or ``make_vec`` would report it."""
        vector = None
        if self.vector:
            vector = {
                "num_envs": self.num_envs,
                "vectorization_mode": self.description.vectorization_mode,
                "vector_kwargs": self._make.get("vector_kwargs"),
            }
        return remote_spec(self.description.spec, self.env_id, self._make.get("kwargs") or {}, vector=vector)

    def request(self, op: int, args: list[Any], timeout: float | None = None) -> list[Any]:
        """One request per shard (``args[i]`` for shard i, none where it is ``SKIP``),
        sent together; answers in shard order (``SKIP`` for shards not asked)."""
        if self.closed:
            raise EnvClosedError(f"remote env {self.env_id!r} is closed")
        started = time.perf_counter()
        timeout = timeout if timeout is not None else self.session.settings.timeout
        asked = [i for i, arg in enumerate(args) if arg is not SKIP]
        if not asked:
            return list(args)
        requests = [(Kind.REQUEST, op, self.channels[i], codec.packb(args[i])) for i in asked]
        try:
            if self.single_conn is not None:
                replies = self.single_conn.call(requests, timeout)
            else:
                replies = self._call_regions(requests, [self.conns[i] for i in asked], timeout)
        except RelayUnavailableError as exc:
            self._rebuild(exc)
        for reply in replies:
            if isinstance(reply.error, RelayUnavailableError):
                self._rebuild(reply.error)
        values: list[Any] = [SKIP] * len(args)
        for i, reply in zip(asked, replies):
            values[i] = reply.value()
        if op == Op.RESET:
            self.needs_reset = False
        if op == Op.STEP:
            self.session.record_step(time.perf_counter() - started, self.num_envs)
        return values

    def _call_regions(
        self, requests: list[tuple[int, int, int, bytes]], conns: list[RelayConnection], timeout: float
    ) -> list[Reply]:
        """Put every region's requests in flight, then gather the answers in request order."""
        deadline = time.monotonic() + timeout
        by_conn: dict[int, tuple[RelayConnection, list[int]]] = {}
        for i, conn in enumerate(conns):
            by_conn.setdefault(id(conn), (conn, []))[1].append(i)
        pending = []
        try:
            for conn, idx in by_conn.values():
                pending.append((conn, idx, conn.start([requests[i] for i in idx])))
        except BaseException:
            for conn, _, slots in pending:  # requests already sent elsewhere: stop waiting for them
                conn.finish(slots, time.monotonic(), timeout)
            raise
        replies: list[Reply | None] = [None] * len(requests)
        for conn, idx, slots in pending:
            for i, reply in zip(idx, conn.finish(slots, deadline, timeout)):
                replies[i] = reply
        return replies  # type: ignore[return-value]

    def request_all(self, op: int, arg: Any = None) -> list[Any]:
        return self.request(op, [arg] * len(self.channels))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for conn, channels in group_channels(self.made):
            self.session.release(conn, channels, close_first=True)

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

log = logging.getLogger("remoterl.trainer")


class ShardsRebuilt(RelayUnavailableError):
    """The relay connection was lost and the envs were made again: their episodes
    ended and the new envs need a reset (``Shards.needs_reset``). The env classes
    turn this into truncation; should it ever escape, it is a coded ``relay_gone``."""


class Shards:
    def __init__(self, session: TrainerSession, env_id: str, num_envs: int, make_arg: dict[str, Any], *, vector: bool):
        self.session = session
        self.env_id = env_id
        self.num_envs = num_envs
        self._make = (make_arg, vector)
        self.needs_reset = False  # made again after a lost connection, not reset since
        made = session.create(env_id, num_envs, make_arg, vector=vector)
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
        groups: dict[int, tuple[RelayConnection, list[int]]] = {}
        for i, conn in enumerate(self.conns):
            groups.setdefault(id(conn), (conn, []))[1].append(i)
        self._by_conn = list(groups.values())  # shard indices per connection (region)
        self.single_conn: RelayConnection | None = self.conns[0] if len(self._by_conn) == 1 else None
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
        make_arg, vector = self._make
        try:
            self.session.wait_for_simulators(1, self.session.settings.simulator_wait)
            self._adopt(self.session.create(self.env_id, self.num_envs, make_arg, vector=vector))
        except RemoteRLError as exc:
            raise lost from exc
        log.warning("%s is served again (%s); its episodes were truncated", self.env_id, self.sizes)
        self.needs_reset = True
        raise ShardsRebuilt(f"{lost}; the envs were made again on a new connection")

    def spec(self) -> EnvSpec | None:
        spec = self.description.spec
        if spec is None:
            return None
        return EnvSpec(
            id=spec.id,
            entry_point="remoterl_ray.trainer.remote_env:RemoteEnv",
            max_episode_steps=spec.max_episode_steps,
            reward_threshold=spec.reward_threshold,
            nondeterministic=spec.nondeterministic,
        )

    def request(self, op: int, args: list[Any], timeout: float | None = None) -> list[Any]:
        """One request per shard (``args[i]`` for shard i), sent together; answers in order."""
        if self.closed:
            raise EnvClosedError(f"remote env {self.env_id!r} is closed")
        started = time.perf_counter()
        timeout = timeout if timeout is not None else self.session.settings.timeout
        requests = [(Kind.REQUEST, op, ch, codec.packb(arg)) for ch, arg in zip(self.channels, args)]
        try:
            if self.single_conn is not None:
                replies = self.single_conn.call(requests, timeout)
            else:
                replies = self._call_regions(requests, timeout)
        except RelayUnavailableError as exc:
            self._rebuild(exc)
        for reply in replies:
            if isinstance(reply.error, RelayUnavailableError):
                self._rebuild(reply.error)
        values = [reply.value() for reply in replies]
        if op == Op.RESET:
            self.needs_reset = False
        if op == Op.STEP:
            self.session.record_step(time.perf_counter() - started, self.num_envs)
        return values

    def _call_regions(self, requests: list[tuple[int, int, int, bytes]], timeout: float) -> list[Reply]:
        """Put every region's requests in flight, then gather the answers in shard order."""
        deadline = time.monotonic() + timeout
        pending = []
        try:
            for conn, idx in self._by_conn:
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

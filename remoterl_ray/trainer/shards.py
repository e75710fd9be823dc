"""The channels behind one remote env, and requests over them.

Both ``RemoteEnv`` (one shard) and ``RemoteVectorEnv`` (one shard per
simulator) keep the connection each shard was created on (shards in other
regions live on other connections): if the relay drops it, their channels
are gone with it and every call raises the connection's
``RelayUnavailableError`` instead of silently reaching a new relay session.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from gymnasium.envs.registration import EnvSpec

from ..protocol import codec
from ..protocol.errors import EnvClosedError
from ..protocol.frames import Kind, Op
from ..protocol.messages import Shard
from ..protocol.spaces import space_from_wire
from ..transport import RelayConnection, Reply
from .session import TrainerSession, group_channels

log = logging.getLogger("remoterl.trainer")


class Shards:
    def __init__(self, session: TrainerSession, env_id: str, num_envs: int, make_arg: dict[str, Any], *, vector: bool):
        self.session = session
        self.env_id = env_id
        made = session.create(env_id, num_envs, make_arg, vector=vector)
        self.made = made
        self.shards: list[Shard] = [m.shard for m in made]
        self.channels = [s.channel for s in self.shards]
        self.conns = [m.conn for m in made]
        self.single_conn: RelayConnection | None = self.conns[0] if len({id(c) for c in self.conns}) == 1 else None
        self.sizes = [s.envs for s in self.shards]
        self.num_envs = sum(self.sizes)
        self.bounds = []
        start = 0
        for size in self.sizes:
            self.bounds.append((start, start + size))
            start += size
        self.description = made[0].description
        self.observation_space = space_from_wire(self.description["observation_space"])
        self.action_space = space_from_wire(self.description["action_space"])
        for other in (m.description for m in made[1:]):
            if (space_from_wire(other["observation_space"]), space_from_wire(other["action_space"])) != (
                self.observation_space,
                self.action_space,
            ):
                log.warning("simulators of %s report different spaces; using the first one's", env_id)
        self.closed = False

    def spec(self) -> EnvSpec | None:
        spec = self.description.get("spec")
        if not spec:
            return None
        return EnvSpec(
            id=str(spec["id"]),
            entry_point="remoterl_ray.trainer.remote_env:RemoteEnv",
            max_episode_steps=spec.get("max_episode_steps"),
            reward_threshold=spec.get("reward_threshold"),
            nondeterministic=bool(spec.get("nondeterministic", False)),
        )

    def request(self, op: int, args: list[Any], timeout: float | None = None) -> list[Any]:
        """One request per shard (``args[i]`` for shard i), sent together; answers in order."""
        if self.closed:
            raise EnvClosedError(f"remote env {self.env_id!r} is closed")
        started = time.perf_counter()
        timeout = timeout if timeout is not None else self.session.settings.timeout
        requests = [(Kind.REQUEST, op, ch, codec.packb(arg)) for ch, arg in zip(self.channels, args)]
        if self.single_conn is not None:
            replies = self.single_conn.call(requests, timeout)
        else:
            replies = self._call_regions(requests, timeout)
        values = [reply.value() for reply in replies]
        if op == Op.STEP:
            self.session.record_step(time.perf_counter() - started, self.num_envs)
        return values

    def _call_regions(self, requests: list[tuple[int, int, int, bytes]], timeout: float) -> list[Reply]:
        """Put every region's requests in flight, then gather the answers in shard order."""
        groups: dict[int, tuple[RelayConnection, list[int]]] = {}
        for i, conn in enumerate(self.conns):
            groups.setdefault(id(conn), (conn, []))[1].append(i)
        deadline = time.monotonic() + timeout
        pending = [(conn, idx, conn.start([requests[i] for i in idx])) for conn, idx in groups.values()]
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

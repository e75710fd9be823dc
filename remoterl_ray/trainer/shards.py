"""The channels behind one remote env, and requests over them.

Both ``RemoteEnv`` (one shard) and ``RemoteVectorEnv`` (one shard per
simulator) keep the connection they were created on: if the relay drops it,
their channels are gone with it and every call raises the connection's
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
from .session import TrainerSession

log = logging.getLogger("remoterl.trainer")


class Shards:
    def __init__(self, session: TrainerSession, env_id: str, num_envs: int, make_arg: dict[str, Any], *, vector: bool):
        self.session = session
        self.env_id = env_id
        self.conn = session.conn
        made = session.create(env_id, num_envs, make_arg, vector=vector)
        self.shards: list[Shard] = [shard for shard, _ in made]
        self.channels = [s.channel for s in self.shards]
        self.sizes = [s.envs for s in self.shards]
        self.num_envs = sum(self.sizes)
        self.bounds = []
        start = 0
        for size in self.sizes:
            self.bounds.append((start, start + size))
            start += size
        self.description = made[0][1]
        self.observation_space = space_from_wire(self.description["observation_space"])
        self.action_space = space_from_wire(self.description["action_space"])
        for _, other in made[1:]:
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
        replies = self.conn.call(
            [(Kind.REQUEST, op, ch, codec.packb(arg)) for ch, arg in zip(self.channels, args)],
            timeout if timeout is not None else self.session.settings.timeout,
        )
        values = [reply.value() for reply in replies]
        if op == Op.STEP:
            self.session.record_step(time.perf_counter() - started, self.num_envs)
        return values

    def request_all(self, op: int, arg: Any = None) -> list[Any]:
        return self.request(op, [arg] * len(self.channels))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.session.release(self.conn, self.channels, close_first=True)

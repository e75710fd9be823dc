"""Layer 6: the trainer's session: making remote envs on simulators.

It asks the relay for channels over the trainer's links (``links.py``) and
makes envs on the simulators behind them, mirroring registrations first.
``RemoteEnv`` and ``RemoteVectorEnv`` are thin views over it (``shards.py``).

Regions: the links say where the workspace's simulators are (``locate``).
When they are in several regions, a new env's copies are spread over the
regions in proportion to their simulators, one connection per region.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..protocol import codec
from ..protocol.compression import AVAILABLE
from ..protocol.codec import READS_DEFAULTDICT
from ..protocol.errors import ErrorCode, NoSimulatorError, ProtocolError, RemoteRLError
from ..protocol.descriptions import EnvDescription, parse_description
from ..protocol.frames import Kind, Op
from ..protocol.limits import MAX_RELEASE_CHANNELS
from ..protocol.messages import Open, Opened, Release, Shard, control_frame, encode_control, parse_control
from ..transport import RelayConnection
from ..transport.discovery import keeps_security
from .links import RelayLinks
from .metrics import RemoteMetrics
from .settings import TrainerSettings

log = logging.getLogger("remoterl.trainer")


@dataclass
class Registration:
    """A mirrored ``gym.register`` call, sent to simulators before a make."""

    id: str
    entry_point: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)
    from_object: bool = False  # registered with a class or function, sent by its importable name

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "entry_point": self.entry_point, "kwargs": self.kwargs, "spec": self.spec}


READABLE = [*AVAILABLE, READS_DEFAULTDICT]  # what this trainer reads: compression codecs, ext 6


@dataclass(frozen=True)
class Made:
    """One shard of a new env: where it lives and what its simulator reported."""

    conn: RelayConnection
    shard: Shard
    description: EnvDescription


def split_by_weight(total: int, weights: list[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainders first)."""
    whole = sum(weights)
    exact = [total * w / whole for w in weights]
    parts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (exact[i] - parts[i], weights[i]), reverse=True)
    for i in by_remainder[: total - sum(parts)]:
        parts[i] += 1
    return parts


class TrainerSession:
    """Makes remote envs over the trainer's links to the relay (``links``): mirrors
    registrations first, asks the relay for channels, spreads a new env's copies
    over the regions, caches descriptions, and keeps the remote-env metrics."""

    def __init__(self, settings: TrainerSettings) -> None:
        self.settings = settings
        self.links = RelayLinks(settings)
        self.registrations: dict[str, Registration] = {}
        self.unmirrored: dict[str, str] = {}  # id -> why its registration stayed local
        self._descriptions: dict[bytes, EnvDescription] = {}
        self.released_later: deque[tuple[RelayConnection, list[int]]] = deque()  # from finalizers: close soon
        self.remote_envs: weakref.WeakSet[Any] = weakref.WeakSet()  # every env's Shards, to claim ahead for
        self.metrics = RemoteMetrics()
        self._tensorboard: Any = None
        self._next_write = 0.0
        if settings.tensorboard_dir:
            from .tensorboard import ScalarWriter  # imported only when asked for

            self._tensorboard = ScalarWriter(settings.tensorboard_dir)

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
        sent, received = self.links.byte_counts()
        return self.metrics.snapshot(bytes_sent=sent, bytes_received=received, simulators=self.links.simulators)

    def _write_tensorboard(self) -> None:
        self._tensorboard.write(self.metrics.total_env_steps, self.metrics_snapshot())

    def claim_ahead(self, conn: RelayConnection, lost: set[RelayConnection], *, skip: Any) -> None:
        """One env resumed on ``conn`` what it had on ``lost`` connections: claim every other
        env's channels there now, without waiting, so an env not used for a while finds
        them resumed (or resumes at once) instead of meeting a simulator that gave up."""
        claims = [claim for env in list(self.remote_envs) if env is not skip for claim in env.claims_on(lost)]
        try:
            conn.claim_ahead(claims)
        except RemoteRLError as exc:  # best effort: each env claims for itself when it is next used
            log.debug("claiming ahead: %s", exc)

    def release_later(self, groups: list[tuple[RelayConnection, list[int]]]) -> None:
        """Channels to close at the next call that makes or steps envs (no I/O here)."""
        self.released_later.extend(groups)

    def release_deferred(self) -> None:
        """Close what finalizers handed back, from a caller's ordinary call."""
        while self.released_later:
            try:
                conn, channels = self.released_later.popleft()
            except IndexError:  # another thread took the last one
                return
            self.release(conn, channels, close_first=True)

    def close(self) -> None:
        self.released_later.clear()  # their connections close with the session
        if self._tensorboard is not None:
            self._write_tensorboard()
            self._tensorboard.close()
            self._tensorboard = None
        self.links.close()

    # -- env lifecycle ----------------------------------------------------

    def create(
        self, env_id: str, num_envs: int, make_arg: dict[str, Any], *, vector: bool, whole: bool = False
    ) -> list[Made]:
        """Open channels for ``num_envs`` envs and make them on the simulators
        (``whole``: all on one simulator, else spread).

        Returns each shard with its connection and the simulator's description
        of its env (spaces, metadata, spec). On any failure every channel is
        released.
        """
        self.release_deferred()
        made: list[Made] = []
        try:
            first_index = 0
            for conn, envs in self._plan(num_envs, whole):
                made += self._create_on(
                    conn, env_id, envs, make_arg, vector=vector, first_index=first_index, whole=whole
                )
                first_index += envs
        except BaseException:
            for conn, channels in group_channels(made):
                self.release(conn, channels, close_first=True)
            raise
        return made

    def _plan(self, num_envs: int, whole: bool = False) -> list[tuple[RelayConnection, int]]:
        """How many envs go to which region's connection."""
        regions = [
            r
            for r in self.links.locate()
            if r.simulators > 0 and (r.url is None or keeps_security(self.settings.relay_url, r.url))
        ]
        if len(regions) <= 1 or num_envs == 1 or whole:
            # One region (or one env): where most simulators are, else ours (the relay says why not).
            best = max(regions, key=lambda r: (r.simulators, r.url is None), default=None)
            return [(self.links.conn if best is None else self.links.region_conn(best), num_envs)]
        parts = split_by_weight(num_envs, [r.simulators for r in regions])
        return [(self.links.region_conn(r), n) for r, n in zip(regions, parts) if n > 0]

    def _create_on(
        self,
        conn: RelayConnection,
        env_id: str,
        num_envs: int,
        make_arg: dict[str, Any],
        *,
        vector: bool,
        first_index: int,
        whole: bool = False,
    ) -> list[Made]:
        per_simulator = num_envs if whole else self.settings.num_env_runners
        request = Open(envs=num_envs, per_simulator=per_simulator)
        reply = conn.call([(Kind.CONTROL, Op.NONE, 0, encode_control(request))], self.settings.timeout)[0]
        if reply.error is not None:
            raise reply.error
        opened = parse_control(reply.payload)
        if not isinstance(opened, Opened):
            raise ProtocolError(f"relay answered an open with {opened.op!r}")
        shards = opened.shards
        if whole and len(shards) > 1:
            self.release(conn, [s.channel for s in shards])
            raise NoSimulatorError(
                f"{env_id!r} vectorises its {num_envs} envs in one object, so one simulator must host them "
                "all, and none has room for them",
                code=ErrorCode.CAPACITY,
            )
        try:
            requests = []
            registration = self.registrations.get(env_id)
            for shard in shards:
                if registration is not None:
                    requests.append((Kind.REQUEST, Op.REGISTER, shard.channel, codec.packb(registration.to_wire())))
                arg = dict(make_arg, id=env_id, codecs=READABLE, max_message=self.settings.max_message)
                arg.setdefault("compression", self.settings.compression)
                if shard.token is not None:
                    arg["resume"] = shard.token  # the simulator keeps the envs for a resume under it
                if vector:
                    arg["num_envs"] = shard.envs
                    arg["first_index"] = first_index  # where this shard's envs sit in the whole vector
                    first_index += shard.envs
                requests.append((Kind.REQUEST, Op.MAKE_VEC if vector else Op.MAKE, shard.channel, codec.packb(arg)))
            replies = conn.call(requests, self.settings.make_timeout)
            for reply in replies:  # registration errors come first, then make errors
                reply.value()
            descriptions = [
                parse_description(r.value(), max_space_bytes=self.settings.max_space_bytes)
                for r in replies
                if r.op in (Op.MAKE, Op.MAKE_VEC)
            ]
            kind = make_arg.get("agents")
            for shard, description in zip(shards, descriptions):  # what was made is what was asked for
                made_kind = None if description.agents is None else description.agents.kind
                if made_kind != kind:
                    raise ProtocolError(
                        f"simulator described a {made_kind or 'single-agent'} env for a {kind or 'single-agent'} make",
                        code=ErrorCode.BAD_PAYLOAD,
                    )
                if description.num_envs != (shard.envs if vector else 1):
                    raise ProtocolError(
                        f"simulator described {description.num_envs} envs for a shard of {shard.envs}",
                        code=ErrorCode.BAD_PAYLOAD,
                    )
            conn.limit_channels({s.channel: d.max_message for s, d in zip(shards, descriptions)})
        except BaseException:
            self.release(conn, [s.channel for s in shards], close_first=True)
            raise
        return [Made(conn, shard, description) for shard, description in zip(shards, descriptions)]

    def describe(self, env_id: str, kwargs: dict[str, Any]) -> EnvDescription:
        """What a simulator reports about ``make(env_id, **kwargs)`` (spaces,
        metadata, spec), from one throwaway env; cached per id and kwargs."""
        key = codec.packb([env_id, kwargs])
        description = self._descriptions.get(key)
        if description is None:
            [made] = self.create(env_id, 1, {"kwargs": kwargs}, vector=False)
            self.release(made.conn, [made.shard.channel], close_first=True)
            description = self._descriptions[key] = made.description
        return description

    def release(self, conn: RelayConnection, channels: list[int], *, close_first: bool = False) -> None:
        """Close the envs on ``channels`` (best effort) and give the channels back;
        requests still out on them (a step sent and never waited for) are dropped."""
        if not channels:
            return
        try:
            if conn.closed:
                return
            live = [ch for ch in channels if ch not in conn.lost_channels and ch not in conn.protocol.paused]
            if close_first and live:
                requests = [(Kind.REQUEST, Op.CLOSE, ch, codec.packb(None)) for ch in live]
                conn.call(requests, min(self.settings.timeout, 10.0))
            for start in range(0, len(channels), MAX_RELEASE_CHANNELS):
                conn.send(control_frame(Release(channels=channels[start : start + MAX_RELEASE_CHANNELS])))
        except RemoteRLError as exc:
            log.debug("releasing channels %s: %s", channels, exc)
        finally:
            conn.forget_channels(channels)


def group_by_conn(conns: list[RelayConnection], items: list[int]) -> list[tuple[RelayConnection, list[int]]]:
    """``items`` (indexes into ``conns``) grouped by their connection, in first-seen order."""
    groups: dict[int, tuple[RelayConnection, list[int]]] = {}
    for i in items:
        groups.setdefault(id(conns[i]), (conns[i], []))[1].append(i)
    return list(groups.values())


def group_channels(made: list[Made]) -> list[tuple[RelayConnection, list[int]]]:
    """Channels grouped by the connection they live on, in first-seen order."""
    groups: dict[int, tuple[RelayConnection, list[int]]] = {}
    for m in made:
        groups.setdefault(id(m.conn), (m.conn, []))[1].append(m.shard.channel)
    return list(groups.values())

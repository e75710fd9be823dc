"""The relay's switchboard: who is online, which channel goes where.

A *channel* is a relay-assigned id for one shard of a trainer's env (a
single env, or the slice of a vector env one simulator hosts). Channel ids
are unique in the relay, so frames are forwarded byte-for-byte with no
rewriting: the relay looks at the 10-byte header, never at the payload.

Everything here runs on the relay's one event loop, so plain dicts need no
locks. It does not import Ray or any web framework: peers are handed in with
async ``send`` and ``close`` callables.

Resuming (``docs/protocol.md``): a channel whose ends both speak ``resume``
gets a random token. When one end leaves without saying goodbye, the channel
is taken off the board and the other end is told ``Paused``; each end then
claims the token (``Resume``), on this relay or, after a restart, on a fresh
one, and the relay pairs the two claims into a new channel. Claims live only
as long as the connection that made them: the relay keeps nothing about
episodes, and a restarted relay needs nothing from the old one.

Placement must stay cheap however many simulators a workspace has, since one
tenant's ``open`` runs on the loop every other tenant shares: each workspace
keeps its simulators with room in a heap (least loaded first), every count a
request needs is kept up to date rather than counted, and large opens,
releases and departures yield to the loop as they go.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..protocol.errors import ErrorCode, NoSimulatorError, ProtocolError, RemoteRLError
from ..protocol.frames import MORE, Kind, Op
from ..protocol.limits import MAX_CLAIMS_PER_PEER
from ..protocol.messages import (
    CAP_RESUME,
    Detach,
    Forget,
    Open,
    Opened,
    Paused,
    Rebound,
    Resume,
    Resumed,
    Shard,
    Simulators,
    control_frame,
    error_frame,
    resume_batches,
)
from .latency import SLICE_SECONDS, LatencyHistogram, LatencyWindow, bucket_of, rounded_ms

log = logging.getLogger("remoterl.relay")
monotonic = time.monotonic  # the data path's clock: round trips are timed by it

SendFn = Callable[[bytes], Awaitable[None]]
CloseFn = Callable[[int, str], Awaitable[None]]
WriteFn = Callable[[bytes], None]

# Channels one trainer connection may hold: its state on the relay stays bounded,
# and one release message (at most 4096 channels) can still close them all.
DEFAULT_MAX_CHANNELS_PER_TRAINER = 4096
MAX_METRIC_WORKSPACES = 256  # workspaces with series of their own in the relay's metrics
OTHER_WORKSPACES = "(others)"  # the workspace label of the rest (not a name a key can have)


async def _no_close(code: int, reason: str) -> None:
    return None


class Presence(Enum):
    """Where a connected peer stands with the relay."""

    ONLINE = "online"
    MOVING = "moving"  # asked to reconnect elsewhere: still forwards, gets no new channels (mark_moving)
    GONE = "gone"  # left, or a send to it failed: nothing is sent to it again
    CUT_OFF = "cut off"  # closed by the relay (a rule broken, an operator): its channels end, never resume




@dataclass(eq=False)
class Peer:
    """One connected trainer or simulator and its traffic counters."""

    id: str
    role: str
    workspace: str
    name: str
    send_raw: SendFn
    close: CloseFn = _no_close  # (close code, reason): ends the connection from the relay's side
    key_id: str = ""  # which key it connected with (metering), never the key itself
    max_envs: int = 0
    connected_at: float = field(default_factory=time.time)
    join_order: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    frames_in: int = 0
    frames_out: int = 0
    env_steps: int = 0
    steps_per_s: float = 0.0  # over the last metering interval
    hosted_envs: int = 0
    channels: set[int] = field(default_factory=set)
    claims: set[str] = field(default_factory=set)  # resume tokens it claimed, waiting for the other end
    paused_ids: dict[int, None] = field(default_factory=dict)  # a trainer's channels paused lately (bounded)
    reserved: dict[str, int] = field(default_factory=dict)  # a simulator's paused envs, by token, until it claims
    resumes: int = 0  # channels resumed with it as one end
    capabilities: frozenset[str] = frozenset()
    presence: Presence = Presence.ONLINE
    write_now: WriteFn | None = None  # the embedded server's connection writes at once, without ASGI
    flow: Any = None  # the embedded server's flow control for this connection (``guarded_server.Flow``)
    latency: LatencyWindow = field(default_factory=LatencyWindow)  # a simulator's step round trips

    @property
    def alive(self) -> bool:
        return self.presence is not Presence.GONE and self.presence is not Presence.CUT_OFF

    @property
    def resumable(self) -> bool:
        return CAP_RESUME in self.capabilities

    def send_now(self, frame: bytes) -> bool:
        """:meth:`send` through ``write_now``, which must be set."""
        if not self.alive:
            return False
        try:
            self.write_now(frame)  # type: ignore[misc]
        except Exception as exc:
            return self._send_failed(exc)
        return self._sent(frame)

    async def send(self, frame: bytes) -> bool:
        """Send, counting bytes; False if the peer is already gone."""
        if self.write_now is not None:
            return self.send_now(frame)
        if not self.alive:
            return False
        try:
            await self.send_raw(frame)
        except Exception as exc:
            return self._send_failed(exc)
        return self._sent(frame)

    def forward_to(self, target: Peer, frame: bytes) -> None:
        """Write this peer's ``frame`` to ``target`` at once; if ``target`` has a lot
        queued, read no more from this peer until it drains (its sender waits, not it)."""
        target.send_now(frame)
        if self.flow is not None and target.flow is not None:
            self.flow.sent_to(target.flow)

    def received(self, frame: bytes) -> None:
        """Count a frame from this peer (whichever path, ASGI or the fast one, took it)."""
        self.bytes_in += len(frame)
        self.frames_in += 1

    def _sent(self, frame: bytes) -> bool:
        self.bytes_out += len(frame)
        self.frames_out += 1
        return True

    def _send_failed(self, exc: Exception) -> bool:
        """The peer is gone (its own handler will clean up after it)."""
        log.debug("send to %s failed: %s", self.id, exc)
        self.presence = Presence.GONE
        return False

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """Counters only; a simulator's step latency (ms) over the last minute."""
        out = {
            "id": self.id,
            "role": self.role,
            "name": self.name,
            "connected_at": self.connected_at,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "env_steps": self.env_steps,
            "steps_per_s": round(self.steps_per_s, 1),
            "channels": len(self.channels),
            "hosted_envs": self.hosted_envs,
            "resumes": self.resumes,
        }
        if self.role == "simulator":
            out["latency"] = rounded_ms(self.latency, time.monotonic() if now is None else now)
        return out


class Seat(Enum):
    """Where a simulator stands for placement. The switchboard keeps it, so a
    simulator is in exactly one place: the heap, out of it, or out for good."""

    READY = "ready"  # eligible and has room: in its workspace's heap
    FULL = "full"  # eligible, hosts its max_envs: back in the heap on a release
    HELD = "held"  # taken out of the heap by an open being placed right now
    MOVING = "moving"  # asked to reconnect elsewhere: never chosen again
    GONE = "gone"  # left, or found dead: never chosen again


ELIGIBLE = frozenset({Seat.READY, Seat.FULL, Seat.HELD})


@dataclass(eq=False, slots=True)
class Slot:
    """A simulator's place in its workspace's pool."""

    peer: Peer
    seat: Seat = Seat.FULL
    entry: tuple[int, int, Slot] | None = None  # its one live heap entry while READY

    @property
    def room(self) -> int:
        return max(0, self.peer.max_envs - self.peer.hosted_envs)


@dataclass(eq=False, slots=True)
class Channel:
    id: int
    trainer: Peer
    simulator: Peer
    envs: int
    placing: Placement | None = None  # the open still placing it: its trainer has not been told yet
    token: str | None = None  # resume token, when both ends resume
    made: bool = False  # its simulator answered the make: there are envs to suspend when it pauses
    asked: tuple[int, int, float] | None = None  # the last request forwarded (seq, op, monotonic time), until answered
    latency: LatencyWindow = field(default_factory=LatencyWindow)  # its step round trips

    def other_end(self, peer: Peer) -> Peer:
        return self.simulator if peer is self.trainer else self.trainer


@dataclass(eq=False, slots=True)
class ClaimOf:
    """One end's claim of a resume token, waiting at the relay for the other end's."""

    peer: Peer
    envs: int


@dataclass(eq=False, slots=True)
class Placement:
    """One ``open`` while it is being placed: what it holds and what it placed, so
    that interleaved opens and departures see consistent state and a failure
    undoes exactly this call's work."""

    trainer: Peer
    per_simulator: int
    held: list[Slot] = field(default_factory=list)  # out of the heap for this call; settled at the end
    deferred: list[Slot] = field(default_factory=list)  # held, already has per_simulator of this trainer's envs
    next_deferred: int = 0
    placed: list[tuple[Channel, Shard]] = field(default_factory=list)
    lost: int = 0  # envs of placed channels whose simulator left meanwhile: to place again
    steps: int = 0  # heap entries looked at plus shards placed, for yielding

    def due(self, every: int) -> bool:
        """Count one step; True once every ``every`` steps (time to yield to the loop)."""
        self.steps += 1
        return self.steps % every == 0


class Pool:
    """A workspace's simulators, those with room in a heap keyed (hosted_envs, join_order).

    An entry whose simulator changed since (released envs, left, moving) is not
    searched for: it stays and is skipped when it surfaces, and the heap is
    rebuilt once such stale entries outnumber live ones, so it stays O(n) in
    size at amortised O(1) per change. Counts a request needs are kept, not
    counted.
    """

    def __init__(self) -> None:
        self.heap: list[tuple[int, int, Slot]] = []
        self.slots: dict[str, Slot] = {}
        self.online = 0  # simulators READY, FULL or HELD
        self.room = 0  # free envs over READY simulators
        self.ready = 0  # live heap entries
        self.stale = 0  # dead heap entries
        self.movers: set[str] = set()  # ids of simulators still connected that were asked to move
        self.examined = 0  # heap entries looked at (live or stale), for tests and benchmarks

    def add(self, peer: Peer) -> None:
        slot = self.slots[peer.id] = Slot(peer)
        self.online += 1
        self.settle(slot)

    def settle(self, slot: Slot) -> None:
        """Put a slot that is out of the heap (FULL, HELD) where it now belongs."""
        if slot.seat not in (Seat.FULL, Seat.HELD):
            return
        if not slot.peer.alive:
            self.retire(slot, Seat.GONE)
        elif slot.room > 0:
            entry = (slot.peer.hosted_envs, slot.peer.join_order, slot)
            slot.seat, slot.entry = Seat.READY, entry
            heapq.heappush(self.heap, entry)
            self.ready += 1
            self.room += slot.peer.max_envs - entry[0]
        else:
            slot.seat = Seat.FULL

    def refresh(self, slot: Slot) -> None:
        """The simulator's hosted envs changed (a release, a resumed channel): key it again (O(log n))."""
        if slot.seat is Seat.READY:
            self._withdraw(slot)
            slot.seat = Seat.FULL
            self.settle(slot)
            self._compact()
        elif slot.seat is Seat.FULL:
            self.settle(slot)

    def retire(self, slot: Slot, seat: Seat) -> None:
        """Out of placement for good (``seat`` is MOVING or GONE)."""
        if slot.seat is Seat.GONE:
            return
        if slot.seat is Seat.READY:
            self._withdraw(slot)
            self._compact()
        if slot.seat in ELIGIBLE:
            self.online -= 1
        slot.seat = seat  # a HELD slot is dropped by its placement when it looks again

    def pop(self) -> Slot | None:
        """The least loaded simulator with room, now HELD; None if there is none."""
        while self.heap:
            entry = heapq.heappop(self.heap)
            self.examined += 1
            slot = entry[2]
            if slot.entry is not entry:
                self.stale -= 1
                continue
            self.ready -= 1
            self.room -= slot.peer.max_envs - entry[0]
            slot.entry, slot.seat = None, Seat.HELD
            if slot.peer.alive:
                return slot
            self.retire(slot, Seat.GONE)
        return None

    def _withdraw(self, slot: Slot) -> None:
        entry = slot.entry
        assert entry is not None
        slot.entry = None
        self.ready -= 1
        self.stale += 1
        self.room -= slot.peer.max_envs - entry[0]

    def _compact(self) -> None:
        if self.stale > 64 and self.stale > self.ready:
            self.heap = [e for e in self.heap if e[2].entry is e]
            heapq.heapify(self.heap)
            self.stale = 0


class _Exhausted(Exception):
    """No simulator has room for what an open still has to place."""


@dataclass
class Workspace:
    name: str
    trainers: dict[str, Peer] = field(default_factory=dict)
    simulators: dict[str, Peer] = field(default_factory=dict)
    pool: Pool = field(default_factory=Pool)
    announcing: asyncio.Task[None] | None = None  # the coalesced simulator count on its way to trainers
    claims: dict[tuple[str, str], ClaimOf] = field(default_factory=dict)  # (token, role) -> a claim waiting


class Switchboard:
    # Work between turns for the event loop, each slice about a millisecond at most on a slow core:
    YIELD_EVERY = 128  # placement steps (heap entries looked at, shards placed)
    CLOSES_PER_TURN = 8  # channels closed: each sends a frame, some 20 placement steps' worth
    ANNOUNCE_SECONDS = 1.0  # simulator counts go to a workspace's trainers at most this often
    SENDS_PER_TURN = 32  # announcement frames sent between turns

    def __init__(self, max_channels_per_trainer: int = DEFAULT_MAX_CHANNELS_PER_TRAINER) -> None:
        self.workspaces: dict[str, Workspace] = {}
        self.channels: dict[int, Channel] = {}
        self.max_channels_per_trainer = max_channels_per_trainer
        self._peers: dict[str, Peer] = {}
        self._mine: dict[tuple[str, str], int] = {}  # (trainer id, simulator id) -> that trainer's envs there
        self._channel_ids = itertools.count(1)
        self._join_order = itertools.count(1)
        # Metrics (never a payload): round trips per (workspace, op), refused frames and hellos
        # per (workspace, error code; "" before a hello names one). Bounded: ops and codes are
        # enums, and past MAX_METRIC_WORKSPACES workspaces (open mode makes one per key) the
        # rest count together as OTHER_WORKSPACES (metric_workspace).
        self.latency: dict[tuple[str, int], LatencyHistogram] = {}
        self.refusals: dict[tuple[str, str], int] = {}
        self._labelled: set[str] = set()

    # -- membership -------------------------------------------------------

    def _workspace(self, name: str) -> Workspace:
        ws = self.workspaces.get(name)
        if ws is None:
            ws = self.workspaces[name] = Workspace(name)
        return ws

    async def join(self, peer: Peer) -> int:
        """Add ``peer``; returns the number of simulators its workspace has online."""
        ws = self._workspace(peer.workspace)
        peer.join_order = next(self._join_order)
        self._peers[peer.id] = peer
        if peer.role == "simulator":
            ws.simulators[peer.id] = peer
            ws.pool.add(peer)
            await self._announce_simulators(ws)
        else:
            ws.trainers[peer.id] = peer
        return len(ws.simulators)

    async def leave(self, peer: Peer, *, resumable: bool = True) -> None:
        """Remove ``peer`` and tell the other end of each of its channels: ``Paused``
        for a channel both ends resume, unless ``peer`` left for good (``resumable``
        False: it said goodbye, or the relay cut it off), else that it is gone."""
        resumable = resumable and peer.presence is not Presence.CUT_OFF
        peer.presence = Presence.GONE
        ws = self.workspaces.get(peer.workspace)
        slot = self._slot(ws, peer)
        if slot is not None:
            ws.pool.retire(slot, Seat.GONE)  # before any await: never chosen from here on
        if ws is not None:
            self._drop_claims(ws, peer, list(peer.claims))  # gone: its count goes with it
        paused: dict[Peer, list[int]] = {}
        for done, channel_id in enumerate(sorted(peer.channels), 1):
            if done % self.CLOSES_PER_TURN == 0:  # a peer may hold thousands of channels: let others in
                await asyncio.sleep(0)
            channel = self.channels.pop(channel_id, None)
            if channel is None:
                continue
            if channel.placing is not None:  # its trainer never heard of it
                if peer.role == "simulator":  # placed again elsewhere
                    channel.trainer.channels.discard(channel_id)
                    self._count(channel, -channel.envs)
                    channel.placing.lost += channel.envs
                else:
                    self._unplace(channel)
                continue
            other = channel.other_end(peer)
            if resumable and channel.token is not None and other.alive:
                if other.role == "simulator" and channel.made:  # its envs stay, suspended: room kept until it claims
                    channel.trainer.channels.discard(channel.id)
                    other.channels.discard(channel.id)
                    self._count(channel, -channel.envs)
                    other.reserved[channel.token] = channel.envs
                else:  # nothing there to claim: its room is free again
                    channel.trainer.channels.discard(channel.id)
                    self._unplace(channel)
                paused.setdefault(other, []).append(channel_id)
                if other.role == "trainer":  # a request on it meanwhile is told it is paused, not unknown
                    other.paused_ids[channel_id] = None
                    if len(other.paused_ids) > self.max_channels_per_trainer:
                        del other.paused_ids[next(iter(other.paused_ids))]
            elif peer.role == "simulator":
                channel.trainer.channels.discard(channel_id)
                self._count(channel, -channel.envs)
                gone = RemoteRLError(
                    f"simulator {peer.name or peer.id} hosting channel {channel_id} disconnected",
                    code=ErrorCode.SIMULATOR_GONE,
                )
                await channel.trainer.send(error_frame(gone.to_wire(), channel=channel_id))
            else:
                await self._detach(channel)
        peer.channels.clear()
        for other, channel_ids in paused.items():
            for batch in resume_batches(channel_ids):
                await other.send(control_frame(Paused(channels=batch)))
        if self._peers.get(peer.id) is peer:
            del self._peers[peer.id]
        if ws is None:
            return
        if peer.role == "simulator":
            if ws.simulators.pop(peer.id, None) is not None:
                ws.pool.slots.pop(peer.id, None)
                ws.pool.movers.discard(peer.id)
                await self._announce_simulators(ws)
        else:
            ws.trainers.pop(peer.id, None)
        if not ws.simulators and not ws.trainers:
            self.workspaces.pop(ws.name, None)

    # -- resuming ---------------------------------------------------------

    async def resume(self, peer: Peer, request: Resume) -> None:
        """``peer`` claims channels by token. A claim the other end already made (same
        workspace, the other role, the same envs) becomes a new channel, and both ends
        are told its id (``Resumed``: the simulator first, so it knows the id before a
        request on it arrives); any other claim waits for the other end's, as long as
        ``peer`` stays connected. A simulator's waiting claims count as envs it hosts.

        Claims past ``MAX_CLAIMS_PER_PEER``, past a simulator's ``max_envs`` or a
        trainer's channel cap are refused (``NoSimulatorError``, capacity), as are
        claims whose envs differ from the other end's (``ProtocolError``); the other
        claims of the message are taken."""
        ws = self.workspaces.get(peer.workspace)
        if ws is None or not peer.alive:
            return
        if len(peer.claims) + len(request.channels) > MAX_CLAIMS_PER_PEER:
            raise NoSimulatorError(
                f"a connection may have at most {MAX_CLAIMS_PER_PEER} resume claims waiting", code=ErrorCode.CAPACITY
            )
        told: dict[Peer, list[Rebound]] = {}
        mismatched = full = 0
        other_role = "simulator" if peer.role == "trainer" else "trainer"
        for claim in request.channels:
            reserved = peer.reserved.pop(claim.token, None)  # a simulator's paused envs: counted already
            if reserved is not None and reserved != claim.envs:
                self._release_reserved(ws, peer, reserved)
                reserved = None
            waiting = ws.claims.get((claim.token, other_role))
            if (  # a peer asked to move elsewhere takes its claims along: it pairs where it lands
                waiting is not None
                and waiting.peer.alive
                and waiting.peer.presence is Presence.ONLINE
                and peer.presence is Presence.ONLINE
            ):
                trainer, sim = (peer, waiting.peer) if peer.role == "trainer" else (waiting.peer, peer)
                if waiting.envs != claim.envs:
                    self._release_reserved(ws, peer, reserved)
                    mismatched += 1
                    continue
                if len(trainer.channels) >= self.max_channels_per_trainer or (
                    sim is peer and reserved is None and not self._has_room(sim, claim.envs)
                ):
                    self._release_reserved(ws, peer, reserved)
                    full += 1
                    continue
                self._drop_claims(ws, waiting.peer, [claim.token], keep_count=True)
                counted = sim is waiting.peer or reserved is not None
                channel = self._rejoin(ws, trainer, sim, claim.token, claim.envs, counted=counted)
                for end in (sim, trainer):
                    end.resumes += 1
                    told.setdefault(end, []).append(Rebound(token=claim.token, channel=channel.id))
                continue
            if peer.role == "simulator" and reserved is None and not self._has_room(peer, claim.envs):
                full += 1
                continue
            mine = ws.claims.get((claim.token, peer.role))
            if mine is not None:  # this end's earlier claim, from a connection that is gone or going
                self._drop_claims(ws, mine.peer, [claim.token])
            ws.claims[(claim.token, peer.role)] = ClaimOf(peer, claim.envs)
            peer.claims.add(claim.token)
            if peer.role == "simulator" and reserved is None:
                self._host(ws, peer, claim.envs)
        for end in sorted(told, key=lambda p: p.role != "simulator"):
            for batch in resume_batches(told[end]):
                await end.send(control_frame(Resumed(channels=batch)))
        if mismatched:
            raise ProtocolError(
                f"{mismatched} resume claims name a different number of envs than the other end's claim",
                code=ErrorCode.BAD_PAYLOAD,
            )
        if full:
            raise NoSimulatorError(
                f"{full} resume claims refused: past a simulator's max_envs or a trainer's channel cap",
                code=ErrorCode.CAPACITY,
            )

    def _release_reserved(self, ws: Workspace, sim: Peer, envs: int | None) -> None:
        if envs is not None and sim.alive:
            self._host(ws, sim, -envs)

    @staticmethod
    def _has_room(sim: Peer, envs: int) -> bool:
        return sim.hosted_envs + envs <= sim.max_envs

    def _host(self, ws: Workspace, sim: Peer, envs: int) -> None:
        """``envs`` more (or fewer) envs on ``sim``, and its place in the pool with them."""
        sim.hosted_envs += envs
        slot = self._slot(ws, sim)
        if slot is not None:
            ws.pool.refresh(slot)

    def _rejoin(self, ws: Workspace, trainer: Peer, sim: Peer, token: str, envs: int, *, counted: bool) -> Channel:
        """The new channel of a resumed token (``counted``: its envs already count as hosted)."""
        channel = Channel(next(self._channel_ids), trainer, sim, envs, token=token)
        self.channels[channel.id] = channel
        trainer.channels.add(channel.id)
        sim.channels.add(channel.id)
        self._count(channel, envs)
        if not counted:
            self._host(ws, sim, envs)
        return channel

    def forget(self, peer: Peer, request: Forget) -> None:
        """``peer`` withdraws its waiting claims of these tokens."""
        ws = self.workspaces.get(peer.workspace)
        if ws is not None:
            self._drop_claims(ws, peer, request.tokens)

    def _drop_claims(self, ws: Workspace, peer: Peer, tokens: list[str], *, keep_count: bool = False) -> None:
        """Withdraw ``peer``'s waiting claims of ``tokens`` (a simulator's envs with them,
        unless ``keep_count``: they move to the channel the claim resumed)."""
        for token in tokens:
            waiting = ws.claims.get((token, peer.role))
            if waiting is not None and waiting.peer is peer:
                del ws.claims[(token, peer.role)]
                if peer.role == "simulator" and not keep_count and peer.alive:
                    self._host(ws, peer, -waiting.envs)
            peer.claims.discard(token)
            if not keep_count:
                self._release_reserved(ws, peer, peer.reserved.pop(token, None))

    @staticmethod
    def _slot(ws: Workspace | None, peer: Peer) -> Slot | None:
        """``peer``'s place in its workspace's pool (simulators only)."""
        return ws.pool.slots.get(peer.id) if ws is not None and peer.role == "simulator" else None

    def mark_moving(self, peer: Peer) -> None:
        """``peer`` was asked to reconnect elsewhere: it gets no new channels, and
        the simulator counts stop including it."""
        if peer.presence is not Presence.ONLINE:
            return
        peer.presence = Presence.MOVING
        ws = self.workspaces.get(peer.workspace)
        slot = self._slot(ws, peer)
        if slot is not None:
            ws.pool.movers.add(peer.id)
            ws.pool.retire(slot, Seat.MOVING)

    async def _announce_simulators(self, ws: Workspace) -> None:
        """Tell the workspace's trainers its simulator count, soon: joins and leaves
        within ``ANNOUNCE_SECONDS`` make one announcement of the latest count, sent in
        turns, so churning simulators cost O(1) per join or leave, never O(trainers)."""
        if ws.announcing is None or ws.announcing.done():
            ws.announcing = asyncio.get_running_loop().create_task(self._announce_later(ws))

    async def _announce_later(self, ws: Workspace) -> None:
        sent = None
        while True:
            await asyncio.sleep(0)  # after the join or leave that asked for it
            count = len(ws.simulators)
            if count == sent:
                return  # nothing changed meanwhile: the next change starts a new announcement
            frame = control_frame(Simulators(count=count))
            for i, trainer in enumerate(list(ws.trainers.values()), 1):
                await trainer.send(frame)
                if i % self.SENDS_PER_TURN == 0:
                    await asyncio.sleep(0)
            sent = count
            await asyncio.sleep(self.ANNOUNCE_SECONDS)

    async def _detach(self, channel: Channel) -> None:
        self._unplace(channel)
        await channel.simulator.send(control_frame(Detach(channel=channel.id)))

    def _unplace(self, channel: Channel) -> None:
        """Undo a channel's bookkeeping on its simulator (the channel is already off the board)."""
        sim = channel.simulator
        sim.channels.discard(channel.id)
        sim.hosted_envs -= channel.envs
        self._count(channel, -channel.envs)
        ws = self.workspaces.get(sim.workspace)
        slot = self._slot(ws, sim)
        if slot is not None:
            ws.pool.refresh(slot)

    def _count(self, channel: Channel, envs: int) -> None:
        key = (channel.trainer.id, channel.simulator.id)
        now = self._mine.get(key, 0) + envs
        if now > 0:
            self._mine[key] = now
        else:
            self._mine.pop(key, None)

    # -- channels ---------------------------------------------------------

    async def open(self, trainer: Peer, request: Open) -> Opened:
        """Spread ``request.envs`` envs over the workspace's simulators.

        Uses ceil(envs / per_simulator) simulators, or all there are if fewer,
        least loaded first (by hosted envs, then join order), preferring those
        where this trainer has fewer than per_simulator envs, with the envs
        split evenly; simulators never get more than their declared
        ``max_envs``, and further simulators are used only where one is full.
        Moving and departed simulators are never chosen.

        Costs O((k + s) log n) for n simulators, k shards made and s simulators
        skipped because this trainer already has per_simulator envs there (at
        most its own channels), and yields to the loop every ``YIELD_EVERY``
        steps, so no workspace holds the loop for long. Raises
        ``NoSimulatorError`` (code ``no_simulator``, or ``capacity`` when there
        is not room or the trainer holds ``max_channels_per_trainer`` channels);
        a failure part way undoes what this call placed.
        """
        ws = self.workspaces.get(trainer.workspace)
        pool = ws.pool if ws is not None else None
        if pool is None or pool.online == 0:
            raise NoSimulatorError(f"no simulator is online in workspace {trainer.workspace}")
        self._check_channel_cap(trainer, 1)
        if pool.room < request.envs:
            raise self._no_room(pool, request.envs)
        placement = Placement(trainer, request.per_simulator)
        try:
            wanted = min(pool.online, -(-request.envs // request.per_simulator))
            chosen: list[Slot] = []
            while len(chosen) < wanted:
                slot = await self._next_slot(pool, placement)
                if slot is None:
                    break
                chosen.append(slot)
                self._check_channel_cap(trainer, len(chosen))
            # Simulators that moved or left while this call yielded drop out here.
            chosen = [s for s in chosen if s.seat is Seat.HELD and s.peer.alive]
            left = request.envs
            for slot, envs in zip(chosen, self._split(request.envs, [s.room for s in chosen])):
                if placement.due(self.YIELD_EVERY):
                    await asyncio.sleep(0)
                if slot.seat is Seat.HELD and slot.peer.alive:
                    self._place(placement, slot, envs)
                    left -= envs
            while True:  # spill: only where a simulator is full (or left meanwhile)
                left += placement.lost
                placement.lost = 0
                if left == 0:
                    held, placement.held = placement.held, []
                    if not held:
                        break  # nothing awaited since the last look: every placed channel stands
                    for slot in held:  # back in the heap, a turn for the loop now and then
                        if placement.due(self.YIELD_EVERY):
                            await asyncio.sleep(0)
                        pool.settle(slot)
                    continue  # a simulator may have left meanwhile: its envs go round again
                self._check_channel_cap(trainer, 1)
                slot = await self._next_slot(pool, placement)
                if slot is None:
                    raise _Exhausted
                if slot.seat is Seat.HELD and slot.peer.alive:
                    envs = min(slot.room, left)
                    self._place(placement, slot, envs)
                    left -= envs
        except BaseException as exc:
            self._undo(placement)
            if isinstance(exc, _Exhausted):  # told after the undo, so the room it names is all there is
                raise self._no_room(pool, request.envs) from None
            raise
        shards = []
        for channel, shard in placement.placed:
            if self.channels.get(channel.id) is channel:
                channel.placing = None
                shards.append(shard)
        return Opened(shards=shards)

    async def _next_slot(self, pool: Pool, placement: Placement) -> Slot | None:
        """The next simulator in placement order, HELD for ``placement``: the least
        loaded where its trainer has fewer than per_simulator envs, else the least
        loaded of the rest; None when none has room."""
        trainer_id = placement.trainer.id
        while True:
            if placement.due(self.YIELD_EVERY):
                await asyncio.sleep(0)
            slot = pool.pop()
            if slot is None:
                break
            placement.held.append(slot)
            if self._mine.get((trainer_id, slot.peer.id), 0) < placement.per_simulator:
                return slot
            placement.deferred.append(slot)
        while placement.next_deferred < len(placement.deferred):
            slot = placement.deferred[placement.next_deferred]
            placement.next_deferred += 1
            if slot.seat is Seat.HELD and slot.peer.alive:
                return slot
        return None

    def _place(self, placement: Placement, slot: Slot, envs: int) -> None:
        sim, trainer = slot.peer, placement.trainer
        channel = Channel(next(self._channel_ids), trainer, sim, envs, placing=placement)
        self.channels[channel.id] = channel
        trainer.channels.add(channel.id)
        sim.channels.add(channel.id)
        sim.hosted_envs += envs
        key = (trainer.id, sim.id)
        self._mine[key] = self._mine.get(key, 0) + envs
        if trainer.resumable and sim.resumable:
            channel.token = secrets.token_urlsafe(16)
        shard = Shard(channel=channel.id, envs=envs, simulator=sim.id, token=channel.token)
        placement.placed.append((channel, shard))

    def _undo(self, placement: Placement) -> None:
        """Take back every channel ``placement`` made (no simulator has heard of them) and its holds."""
        for channel, _ in placement.placed:
            if self.channels.get(channel.id) is channel:
                del self.channels[channel.id]
                channel.trainer.channels.discard(channel.id)
                self._unplace(channel)
        ws = self.workspaces.get(placement.trainer.workspace)
        if ws is not None:
            for slot in placement.held:
                ws.pool.settle(slot)

    def _check_channel_cap(self, trainer: Peer, more: int) -> None:
        if len(trainer.channels) + more > self.max_channels_per_trainer:
            raise NoSimulatorError(
                f"a trainer may hold at most {self.max_channels_per_trainer} channels "
                f"(max_channels_per_trainer); it holds {len(trainer.channels)}: release some, "
                "or ask for more envs per simulator",
                code=ErrorCode.CAPACITY,
            )

    @staticmethod
    def _no_room(pool: Pool, envs: int) -> NoSimulatorError:
        if pool.online == 0:
            return NoSimulatorError("no simulator is online in this workspace any more")
        return NoSimulatorError(
            f"simulators have room for {pool.room} more envs, {envs} were asked for", code=ErrorCode.CAPACITY
        )

    @staticmethod
    def _split(envs: int, rooms: list[int]) -> list[int]:
        """Even split of ``envs`` over simulators with ``rooms`` free (in placement order).

        Where a share does not divide evenly the first in order get one more;
        a simulator with less room than its share takes what it has and the
        others share the rest. The shares fall short of ``envs`` only when every
        room is used up: the caller then spills onto further simulators.
        """
        shares = [0] * len(rooms)
        left = envs
        by_room = sorted(range(len(rooms)), key=rooms.__getitem__)
        for pos, i in enumerate(by_room):
            level = left // (len(rooms) - pos)
            if rooms[i] <= level:
                shares[i] = rooms[i]
                left -= rooms[i]
                continue
            rest = sorted(by_room[pos:])  # each has room for level + 1
            extra = left - level * len(rest)
            for rank, j in enumerate(rest):
                shares[j] = level + (rank < extra)
            break
        return shares

    async def release(self, trainer: Peer, channel_ids: list[int]) -> None:
        """Close ``trainer``'s channels among ``channel_ids`` (others are ignored); each
        one is closed whole, and the loop gets a turn every ``CLOSES_PER_TURN`` of them."""
        for done, channel_id in enumerate(channel_ids, 1):
            if done % self.CLOSES_PER_TURN == 0:
                await asyncio.sleep(0)
            channel = self.channels.get(channel_id)
            if channel is None or channel.trainer is not trainer:
                continue
            del self.channels[channel_id]
            trainer.channels.discard(channel_id)
            await self._detach(channel)

    # -- the data path ----------------------------------------------------

    def route(self, peer: Peer, kind: int, op: int, channel_id: int, seq: int) -> Peer | None:
        """Where a REQUEST/RESPONSE/ERROR frame from ``peer`` goes: the other end of its
        channel (a step counted), None for a late answer on a channel already released
        (dropped), as for every frame of a peer cut off or gone. Raises for a frame
        ``peer`` may not send, before counting anything.

        A request's last (or only) frame starts a clock; the answer's last frame with
        the same ``seq`` stops it: the round trip through the simulator, from headers."""
        if not peer.alive:
            return None
        channel = self.channels.get(channel_id)
        if kind == Kind.REQUEST:
            if peer.role != "trainer":
                raise ProtocolError("only trainers send requests")
            if channel is None or channel.trainer is not peer:
                if channel is None and channel_id in peer.paused_ids:
                    raise RemoteRLError(f"channel {channel_id} is paused", code=ErrorCode.CHANNEL_PAUSED)
                raise RemoteRLError(
                    f"channel {channel_id} is not open (closed, or never opened)", code=ErrorCode.UNKNOWN_CHANNEL
                )
            if op == Op.STEP:
                peer.env_steps += channel.envs
                channel.simulator.env_steps += channel.envs
            if op < MORE:
                channel.asked = (seq, op, monotonic())
            return channel.simulator
        if peer.role != "simulator":
            raise ProtocolError("only simulators send responses")
        if channel is None or channel.simulator is not peer:
            return None
        if op == Op.MAKE or op == Op.MAKE_VEC:
            channel.made = kind == Kind.RESPONSE  # its envs exist on the simulator (and outlive a pause)
        asked = channel.asked
        if asked is not None and asked[0] == seq and op < MORE:
            channel.asked = None
            self._timed(channel, asked[1], asked[2])
        return channel.trainer

    def _timed(self, channel: Channel, op: int, since: float) -> None:
        now = monotonic()
        seconds = now - since
        if op == Op.STEP:
            bucket, number = bucket_of(seconds), int(now // SLICE_SECONDS)
            channel.latency.add_bucket(bucket, number)
            channel.simulator.latency.add_bucket(bucket, number)
        key = (self.metric_workspace(channel.trainer.workspace), op)
        histogram = self.latency.get(key)
        if histogram is None:
            histogram = self.latency[key] = LatencyHistogram()
        histogram.add(seconds)

    def metric_workspace(self, workspace: str) -> str:
        """The ``workspace`` label of ``workspace``'s metrics: its own name for the first
        ``MAX_METRIC_WORKSPACES`` seen, then ``OTHER_WORKSPACES``."""
        if workspace in self._labelled:
            return workspace
        if len(self._labelled) < MAX_METRIC_WORKSPACES:
            self._labelled.add(workspace)
            return workspace
        return OTHER_WORKSPACES

    def refused(self, workspace: str, code: ErrorCode) -> None:
        """Count a refused frame or hello (``workspace`` "" before a hello named one)."""
        key = (self.metric_workspace(workspace), code.value)
        self.refusals[key] = self.refusals.get(key, 0) + 1

    async def forward(self, peer: Peer, frame: bytes, kind: int, op: int, channel_id: int, seq: int) -> None:
        """Route a REQUEST/RESPONSE/ERROR frame to the other end of its channel."""
        target = self.route(peer, kind, op, channel_id, seq)
        if target is not None:
            if target.write_now is not None:
                peer.forward_to(target, frame)
            else:
                await target.send(frame)

    def peers(self, workspace: str | None = None) -> list[Peer]:
        """Every peer online (of ``workspace``, if given): a list, safe to await over."""
        spaces = (
            [self.workspaces[workspace]]
            if workspace in self.workspaces
            else []
            if workspace
            else self.workspaces.values()
        )
        return [p for ws in spaces for p in (*ws.trainers.values(), *ws.simulators.values())]

    def find(self, peer_id: str) -> Peer | None:
        return self._peers.get(peer_id)

    def simulator_count(self, workspace: str) -> int:
        """Simulators of ``workspace`` online and not moving elsewhere (kept, not counted)."""
        ws = self.workspaces.get(workspace)
        return len(ws.simulators) - len(ws.pool.movers) if ws else 0

    def idle_peers(self, workspace: str) -> list[Peer]:
        """Peers of ``workspace`` with no channel, not yet moving: free to move elsewhere."""
        ws = self.workspaces.get(workspace)
        if ws is None:
            return []
        return [p for p in (*ws.simulators.values(), *ws.trainers.values()) if not p.channels and p.presence is Presence.ONLINE]

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per-workspace counts, small enough to publish every second."""
        out: dict[str, dict[str, Any]] = {}
        for name, ws in self.workspaces.items():
            peers = [*ws.trainers.values(), *ws.simulators.values()]
            out[name] = {
                "trainers": len(ws.trainers),
                "simulators": self.simulator_count(name),
                "idle": sum(1 for p in peers if not p.channels and p.presence is Presence.ONLINE),
                "newest": max(peers, key=lambda p: p.join_order).id,  # shows where the ingress sends it now
                "bytes_in": sum(p.bytes_in for p in peers),
                "bytes_out": sum(p.bytes_out for p in peers),
                "env_steps": sum(t.env_steps for t in ws.trainers.values()),
            }
        return out

    def stats(self, *, per_channel: bool = False) -> dict[str, Any]:
        """Every peer's counters; a simulator's with its step latency, and with
        ``per_channel`` (``/v1/stats``: thousands of windows, so not every second) each
        of its channels' too."""
        now = time.monotonic()
        channels: dict[str, dict[str, Any]] = {}
        for channel in self.channels.values() if per_channel else ():
            q = rounded_ms(channel.latency, now)
            if q is not None:
                channels.setdefault(channel.simulator.id, {})[str(channel.id)] = q

        def simulator(peer: Peer) -> dict[str, Any]:
            snapshot = peer.snapshot(now)
            if per_channel:
                snapshot["channel_latency"] = channels.get(peer.id, {})
            return snapshot

        return {
            "workspaces": {
                name: {
                    "trainers": [p.snapshot(now) for p in ws.trainers.values()],
                    "simulators": [simulator(p) for p in ws.simulators.values()],
                }
                for name, ws in self.workspaces.items()
            },
            "channels": len(self.channels),
        }

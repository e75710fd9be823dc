"""The relay's switchboard: who is online, which channel goes where.

A *channel* is a relay-assigned id for one shard of a trainer's env (a
single env, or the slice of a vector env one simulator hosts). Channel ids
are unique in the relay, so frames are forwarded byte-for-byte with no
rewriting: the relay looks at the 10-byte header, never at the payload.

Everything here runs on the relay's one event loop, so plain dicts need no
locks. It does not import Ray or any web framework: peers are handed in with
async ``send`` and ``close`` callables.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..protocol.errors import ErrorCode, NoSimulatorError, ProtocolError, RemoteRLError
from ..protocol.frames import Kind, Op
from ..protocol.messages import Detach, Open, Opened, Shard, Simulators, control_frame, error_frame

log = logging.getLogger("remoterl.relay")

SendFn = Callable[[bytes], Awaitable[None]]
CloseFn = Callable[[int, str], Awaitable[None]]


async def _no_close(code: int, reason: str) -> None:
    return None


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
    protocol_errors: int = 0
    steps_per_s: float = 0.0  # over the last metering interval
    hosted_envs: int = 0
    channels: set[int] = field(default_factory=set)
    capabilities: frozenset[str] = frozenset()
    alive: bool = True
    moving: bool = False  # asked to reconnect elsewhere: gets no new channels

    async def send(self, frame: bytes) -> bool:
        """Send, counting bytes; False if the peer is already gone."""
        if not self.alive:
            return False
        try:
            await self.send_raw(frame)
        except Exception as exc:  # the peer's own handler will clean up after it
            log.debug("send to %s failed: %s", self.id, exc)
            self.alive = False
            return False
        self.bytes_out += len(frame)
        self.frames_out += 1
        return True

    def snapshot(self) -> dict[str, Any]:
        return {
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
        }


@dataclass(eq=False)
class Channel:
    id: int
    trainer: Peer
    simulator: Peer
    envs: int


@dataclass
class Workspace:
    name: str
    trainers: dict[str, Peer] = field(default_factory=dict)
    simulators: dict[str, Peer] = field(default_factory=dict)


class Switchboard:
    def __init__(self) -> None:
        self.workspaces: dict[str, Workspace] = {}
        self.channels: dict[int, Channel] = {}
        self._channel_ids = itertools.count(1)
        self._join_order = itertools.count(1)

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
        if peer.role == "simulator":
            ws.simulators[peer.id] = peer
            await self._announce_simulators(ws)
        else:
            ws.trainers[peer.id] = peer
        return len(ws.simulators)

    async def leave(self, peer: Peer) -> None:
        """Remove ``peer`` and tell the other end of each of its channels."""
        peer.alive = False
        ws = self.workspaces.get(peer.workspace)
        for channel_id in sorted(peer.channels):
            channel = self.channels.pop(channel_id, None)
            if channel is None:
                continue
            if peer.role == "simulator":
                channel.trainer.channels.discard(channel_id)
                gone = RemoteRLError(
                    f"simulator {peer.name or peer.id} hosting channel {channel_id} disconnected",
                    code=ErrorCode.SIMULATOR_GONE,
                )
                await channel.trainer.send(error_frame(gone.to_wire(), channel=channel_id))
            else:
                await self._detach(channel)
        peer.channels.clear()
        if ws is None:
            return
        if peer.role == "simulator":
            ws.simulators.pop(peer.id, None)
            await self._announce_simulators(ws)
        else:
            ws.trainers.pop(peer.id, None)
        if not ws.simulators and not ws.trainers:
            self.workspaces.pop(ws.name, None)

    async def _announce_simulators(self, ws: Workspace) -> None:
        frame = control_frame(Simulators(count=len(ws.simulators)))
        for trainer in list(ws.trainers.values()):
            await trainer.send(frame)

    async def _detach(self, channel: Channel) -> None:
        sim = channel.simulator
        sim.channels.discard(channel.id)
        sim.hosted_envs -= channel.envs
        await sim.send(control_frame(Detach(channel=channel.id)))

    # -- channels ---------------------------------------------------------

    def open(self, trainer: Peer, request: Open) -> Opened:
        """Spread ``request.envs`` envs over the workspace's simulators.

        Uses ceil(envs / per_simulator) simulators, or all there are if fewer,
        least loaded first, with the envs split evenly; simulators never get
        more than their declared ``max_envs``.
        """
        ws = self.workspaces.get(trainer.workspace)
        sims = [s for s in (ws.simulators.values() if ws else ()) if s.alive and not s.moving]
        if not sims:
            raise NoSimulatorError(f"no simulator is online in workspace {trainer.workspace}")
        mine = {s.id: 0 for s in sims}
        for channel_id in trainer.channels:
            ch = self.channels.get(channel_id)
            if ch is not None and ch.simulator.id in mine:
                mine[ch.simulator.id] += ch.envs
        wanted = min(len(sims), -(-request.envs // request.per_simulator))
        sims.sort(key=lambda s: (mine[s.id] >= request.per_simulator, s.hosted_envs, s.join_order))
        plan = self._split(request.envs, sims[:wanted], sims[wanted:])
        shards = []
        for sim, envs in plan:
            channel = Channel(next(self._channel_ids), trainer, sim, envs)
            self.channels[channel.id] = channel
            trainer.channels.add(channel.id)
            sim.channels.add(channel.id)
            sim.hosted_envs += envs
            shards.append(Shard(channel=channel.id, envs=envs, simulator=sim.id))
        return Opened(shards=shards)

    @staticmethod
    def _split(envs: int, chosen: list[Peer], spare: list[Peer]) -> list[tuple[Peer, int]]:
        """Even split over ``chosen``; spill into ``spare`` only where a simulator is full."""
        room = {s.id: max(0, s.max_envs - s.hosted_envs) for s in chosen + spare}
        plan: dict[str, int] = {}
        pool = list(chosen)
        left = envs
        while left > 0:
            pool = [s for s in pool if room[s.id] > plan.get(s.id, 0)]
            if not pool:
                pool = [s for s in spare if room[s.id] > plan.get(s.id, 0)][:1]
                spare = [s for s in spare if s not in pool]
                if not pool:
                    total = sum(room.values())
                    raise NoSimulatorError(
                        f"simulators have room for {total} more envs, {envs} were asked for", code=ErrorCode.CAPACITY
                    )
            share = max(1, left // len(pool))
            for sim in pool:
                take = min(share, room[sim.id] - plan.get(sim.id, 0), left)
                plan[sim.id] = plan.get(sim.id, 0) + take
                left -= take
                if left == 0:
                    break
        by_id = {s.id: s for s in chosen + spare}
        return [(by_id[sid], n) for sid, n in plan.items() if n > 0]

    async def release(self, trainer: Peer, channel_ids: list[int]) -> None:
        for channel_id in channel_ids:
            channel = self.channels.get(channel_id)
            if channel is None or channel.trainer is not trainer:
                continue
            del self.channels[channel_id]
            trainer.channels.discard(channel_id)
            await self._detach(channel)

    # -- the data path ----------------------------------------------------

    async def forward(self, peer: Peer, frame: bytes, kind: int, op: int, channel_id: int, seq: int) -> None:
        """Route a REQUEST/RESPONSE/ERROR frame to the other end of its channel."""
        channel = self.channels.get(channel_id)
        if kind == Kind.REQUEST:
            if peer.role != "trainer":
                raise ProtocolError("only trainers send requests")
            if channel is None or channel.trainer is not peer:
                raise RemoteRLError(
                    f"channel {channel_id} is not open (closed, or never opened)", code=ErrorCode.UNKNOWN_CHANNEL
                )
            if op == Op.STEP:
                peer.env_steps += channel.envs
                channel.simulator.env_steps += channel.envs
            await channel.simulator.send(frame)
        else:
            if peer.role != "simulator":
                raise ProtocolError("only simulators send responses")
            if channel is None or channel.simulator is not peer:
                return  # a late answer for a channel already released: drop it
            await channel.trainer.send(frame)

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
        for peer in self.peers():
            if peer.id == peer_id:
                return peer
        return None

    def simulator_count(self, workspace: str) -> int:
        ws = self.workspaces.get(workspace)
        return sum(1 for s in ws.simulators.values() if not s.moving) if ws else 0

    def idle_peers(self, workspace: str) -> list[Peer]:
        """Peers of ``workspace`` with no channel, not yet moving: free to move elsewhere."""
        ws = self.workspaces.get(workspace)
        if ws is None:
            return []
        return [p for p in (*ws.simulators.values(), *ws.trainers.values()) if not p.channels and not p.moving]

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per-workspace counts, small enough to publish every second."""
        out: dict[str, dict[str, Any]] = {}
        for name, ws in self.workspaces.items():
            peers = [*ws.trainers.values(), *ws.simulators.values()]
            out[name] = {
                "trainers": len(ws.trainers),
                "simulators": self.simulator_count(name),
                "idle": sum(1 for p in peers if not p.channels and not p.moving),
                "newest": max(peers, key=lambda p: p.join_order).id,  # shows where the ingress sends it now
                "bytes_in": sum(p.bytes_in for p in peers),
                "bytes_out": sum(p.bytes_out for p in peers),
                "env_steps": sum(t.env_steps for t in ws.trainers.values()),
            }
        return out

    def stats(self) -> dict[str, Any]:
        return {
            "workspaces": {
                name: {
                    "trainers": [p.snapshot() for p in ws.trainers.values()],
                    "simulators": [p.snapshot() for p in ws.simulators.values()],
                }
                for name, ws in self.workspaces.items()
            },
            "channels": len(self.channels),
        }

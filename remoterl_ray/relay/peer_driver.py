"""The relay's ASGI driver for one peer's WebSocket (``/ws``).

It does the I/O the relay-side protocol (``protocol.relay_protocol``) leaves
out: waiting for the hello within its time, asking the accounts whether a
key is admitted, sending the welcome, handing frames to the switchboard and
refusals back to the peer, closing it when the protocol says so.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import Callable
from typing import Any, Protocol

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from ..accounts.store import Identity
from ..protocol.closing import CLOSE_POLICY, CLOSE_PROTOCOL_ERROR, close_reason, said_goodbye
from ..protocol.errors import ErrorCode, FrameTooLargeError, ProtocolError, RemoteRLError
from ..protocol.messages import (
    CAP_CHUNKS,
    CAP_LOCATE,
    CAP_RESUME,
    Forget,
    Locate,
    Open,
    Paused,
    Regions,
    Release,
    Resume,
    Welcome,
    control_frame,
    error_frame,
)
from ..protocol.relay_protocol import ControlRequest, Forward, RelayPeerProtocol
from ..rate_limited_log import RateLimitedLog
from .accounting import Accounting
from .dashboard import source_of
from .directory import Directory
from .switchboard import Peer, Presence, Switchboard

log = logging.getLogger("remoterl.relay")
peer_log = RateLimitedLog(log)  # refused and broken connections: one short line each, rate-limited

CONNECTION_EXTENSION = "remoterl.connection"
"""ASGI scope extension by which the embedded server (``server.py``) offers hooks
for one connection; other servers (Ray Serve's) do not, and the relay works
without it."""


class ServerConnection(Protocol):
    def authenticated(self) -> None:
        """The peer passed its hello: it may use the limits of an admitted peer."""

    def writer(self) -> Callable[[bytes], None] | None:
        """A function that sends one binary message at once (None: only ASGI's send)."""

    def take_frames(self, handler: Callable[[bytes], bool] | None) -> None:
        """Offer each binary message to ``handler`` as it arrives, while the app waits
        for none (True: taken; False: it goes to the ASGI queue as usual)."""

    def flow(self) -> Any:
        """This connection's flow control (``guarded_server.Flow``), or None."""


class _NoServerHooks:
    def authenticated(self) -> None:
        return None

    def writer(self) -> None:
        return None

    def take_frames(self, handler: Callable[[bytes], bool] | None) -> None:
        return None

    def flow(self) -> None:
        return None


def server_connection(ws: WebSocket) -> ServerConnection:
    hooks = ws.scope.get("extensions", {}).get(CONNECTION_EXTENSION)
    return hooks if hooks is not None else _NoServerHooks()


class Waiting:
    """Whether a peer's pump waits for its next message (then frames may skip the queue)."""

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = False


class _Refused(Exception):
    def __init__(self, error: RemoteRLError, close_code: int) -> None:
        self.error = error
        self.close_code = close_code


class PeerDriver:
    """Serves ``/ws``: one instance per relay app, one ``serve`` call per connection."""

    def __init__(
        self,
        board: Switchboard,
        accounting: Accounting,
        directory: Directory,
        max_frame: int,
        max_protocol_errors: int,
        hello_timeout: float,
        *,
        has_accounts: bool,
    ) -> None:
        self.board, self.accounting, self.directory = board, accounting, directory
        self.max_frame, self.max_protocol_errors, self.hello_timeout = max_frame, max_protocol_errors, hello_timeout
        self.has_accounts = has_accounts
        self.peer_ids = itertools.count(1)
        self.instance = secrets.token_hex(3)  # peer ids stay unique across replicas and restarts

    async def send_bytes(self, ws: WebSocket, data: bytes) -> None:
        await ws.send({"type": "websocket.send", "bytes": data})

    async def greet(self, ws: WebSocket, source: str, protocol: RelayPeerProtocol) -> tuple[Peer, Identity]:
        """Read the hello: rate limit first, then the protocol's checks (size, shape, version), then the key."""
        try:
            message = await asyncio.wait_for(ws.receive(), self.hello_timeout)
        except asyncio.TimeoutError:
            self.accounting.failed(source)
            raise _Refused(ProtocolError("no hello received in time", code=ErrorCode.BAD_HELLO), CLOSE_POLICY) from None
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        try:
            self.accounting.check_rate(source)  # a refused address is turned away before its hello is decoded
        except RemoteRLError as exc:
            raise _Refused(exc, CLOSE_POLICY) from None
        try:
            hello = protocol.receive_hello(message.get("bytes"))
        except ProtocolError as exc:
            self.accounting.failed(source)  # malformed hellos count like bad keys
            raise _Refused(exc, CLOSE_PROTOCOL_ERROR) from None
        try:
            identity = await self.accounting.admit(hello.api_key, source)
        except RemoteRLError as exc:
            raise _Refused(exc, CLOSE_POLICY) from None
        peer = Peer(
            id=f"{hello.role[0]}-{self.instance}-{next(self.peer_ids)}",
            role=hello.role,
            workspace=identity.workspace,
            name=hello.name,
            send_raw=lambda frame: self.send_bytes(ws, frame),
            write_now=server_connection(ws).writer(),
            flow=server_connection(ws).flow(),
            close=lambda code, reason: ws.close(code, reason),
            key_id=identity.key_id,
            max_envs=hello.max_envs if hello.role == "simulator" else 0,
            capabilities=frozenset(hello.capabilities),
        )
        return peer, identity

    async def refuse(self, ws: WebSocket, source: str, refused: _Refused) -> None:
        """Tell a refused peer why (if it still listens) and close: one short log line, never a traceback."""
        peer_log.info(refused.error.code.value, "refused a connection from %s: %s", source, refused.error)
        self.board.refused("", refused.error.code)
        try:
            await self.send_bytes(ws, error_frame(refused.error.to_wire()))
            await ws.close(refused.close_code, close_reason(refused.error))
        except (OSError, RuntimeError, WebSocketDisconnect):
            pass  # it hung up first: nothing left to tell it

    async def handle_control(self, peer: Peer, request: ControlRequest) -> None:
        message = request.message
        if isinstance(message, Open):
            await peer.send(control_frame(await self.board.open(peer, message), request.seq))
        elif isinstance(message, Locate):
            regions = Regions(regions=self.directory.regions_for(peer.workspace, self.board))
            await peer.send(control_frame(regions, request.seq))
        elif isinstance(message, Release):
            await self.board.release(peer, message.channels)
        elif isinstance(message, Resume):
            await self.board.resume(peer, message)
        elif isinstance(message, Forget):
            self.board.forget(peer, message)

    async def serve(self, ws: WebSocket) -> None:
        """The ``/ws`` endpoint: greet, then serve the peer until it leaves."""
        source = source_of(ws)
        try:
            await ws.accept()
            protocol = RelayPeerProtocol(self.max_frame, self.max_protocol_errors)
            try:
                peer, identity = await self.greet(ws, source, protocol)
            except _Refused as refused:
                await self.refuse(ws, source, refused)
                return
            server_connection(ws).authenticated()
            await self.serve_peer(ws, peer, identity, protocol)
        except (OSError, WebSocketDisconnect):
            pass  # the peer went away mid-send: its handler has cleaned up
        except Exception as exc:  # a peer must never be able to fill the log with tracebacks
            peer_log.warning(type(exc).__name__, "connection from %s ended by %s: %s", source, type(exc).__name__, exc)
            log.debug("connection from %s ended", source, exc_info=True)

    async def serve_peer(self, ws: WebSocket, peer: Peer, identity: Identity, protocol: RelayPeerProtocol) -> None:
        try:
            simulators = await self.board.join(peer)
            await peer.send(
                control_frame(
                    Welcome(
                        peer_id=peer.id,
                        workspace=peer.workspace,
                        simulators=simulators,
                        max_frame=self.max_frame,
                        region=self.directory.region,
                        capabilities=[CAP_LOCATE, CAP_RESUME, CAP_CHUNKS],
                        quota=self.accounting.quota(identity.workspace, identity.plan) if self.has_accounts else None,
                    )
                )
            )
            goodbye = await self.pump(ws, peer, protocol)
        except BaseException:
            goodbye = False  # the connection broke: its channels may resume
            raise
        finally:
            try:
                await self.board.leave(peer, resumable=not goodbye)
            finally:
                self.accounting.settle(peer)  # its last counts are billed whatever happened

    async def pump(self, ws: WebSocket, peer: Peer, protocol: RelayPeerProtocol) -> bool:
        """The hot loop: one iteration per message the peer sends; the protocol says what it is.
        Returns whether the peer left for good (see ``said_goodbye``).

        Where the server allows it (the embedded relay's), a forwarded frame that arrives
        while this loop waits is forwarded at once by :meth:`forward_now` instead, with
        the same effect; anything else, or anything while the loop is busy, queues here
        in order."""
        receive, forward = ws.receive, self.board.forward
        waiting = Waiting()
        connection = server_connection(ws)
        if peer.write_now is not None:
            connection.take_frames(lambda data: waiting.now and self.forward_now(peer, protocol, data))
        try:
            while True:
                waiting.now = True
                message = await receive()
                waiting.now = False
                data = message.get("bytes")
                if data is None and message["type"] == "websocket.disconnect":
                    return said_goodbye(message.get("code"))
                if data is not None:
                    peer.received(data)
                event = protocol.receive(data)
                if type(event) is Forward:
                    try:
                        await forward(peer, data, event.kind, event.op, event.channel, event.seq)
                        continue
                    except RemoteRLError as exc:
                        if exc.code is ErrorCode.CHANNEL_PAUSED:  # no fault of the peer's: told, not counted
                            # in a CONTROL frame, which only the relay sends (a simulator cannot forge it)
                            await peer.send(control_frame(Paused(channels=[event.channel])))
                            continue
                        event = protocol.refuse(exc, event.op, event.channel, event.seq)
                elif type(event) is ControlRequest:
                    try:
                        await self.handle_control(peer, event)
                        continue
                    except RemoteRLError as exc:
                        event = protocol.refuse(exc, event.op, event.channel, event.seq)
                self.board.refused(peer.workspace, event.error.code)
                await peer.send(event.frame)
                if isinstance(event.error, FrameTooLargeError) and peer.role == "simulator":
                    # Fail the trainer's request now instead of letting it time out.
                    route = self.board.channels.get(event.channel)
                    if route is not None and route.simulator is peer:
                        await route.trainer.send(
                            error_frame(event.error.to_wire(), op=event.op, channel=event.channel, seq=event.seq)
                        )
                if event.cut_off:
                    peer_log.info("too many refused frames", "closing %s from %s: too many refused frames", peer.id,
                                  source_of(ws))  # fmt: skip
                    if peer.alive:  # not already closed by an operator action
                        peer.presence = Presence.CUT_OFF
                        await ws.close(CLOSE_POLICY, "too many refused frames")
                    return True
        finally:
            connection.take_frames(None)

    def forward_now(self, peer: Peer, protocol: RelayPeerProtocol, data: bytes) -> bool:
        """A well-formed forward whose target writes at once, done as :meth:`pump` would;
        False (nothing done): the pump takes it."""
        event = protocol.forward_of(data)
        if event is None:
            return False
        try:
            target = self.board.route(peer, event.kind, event.op, event.channel, event.seq)
        except RemoteRLError:
            return False  # refused by the pump, as any frame the peer may not send
        peer.received(data)
        if target is not None:
            peer.forward_to(target, data)  # every peer of the board came through this server: each has write_now
        return True


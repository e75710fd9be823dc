"""Hostile peers for the attack tests: raw sockets and WebSockets from chosen
loopback addresses, and a simulator that answers however a test tells it to.

Linux routes all of 127.0.0.0/8 to loopback, so an attacker can come from
127.0.0.2 while the bystander stays on 127.0.0.1, as two hosts would.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
from websockets.frames import Frame, Opcode
from websockets.sync.client import ClientConnection, connect

from remoterl_ray.local import rss_mb
from remoterl_ray.protocol import codec
from remoterl_ray.protocol.frames import HEADER_SIZE, Kind, Op, pack, unpack_header
from remoterl_ray.protocol.messages import Hello, Open, Welcome, control_frame, encode_control, parse_control

UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


def tcp(relay: Any, source: str = "127.0.0.2", timeout: float = 10.0) -> socket.socket:
    """A plain TCP connection to the relay from ``source``."""
    sock = socket.create_connection((relay.host, relay.port), timeout=timeout, source_address=(source, 0))
    sock.settimeout(timeout)
    return sock


def websocket(relay: Any, source: str = "127.0.0.2", **kwargs: Any) -> ClientConnection:
    """A WebSocket to the relay's /ws from ``source`` (nothing sent yet)."""
    kwargs.setdefault("open_timeout", 10)
    return connect(
        f"{relay.url}/ws", sock=tcp(relay, source), compression=None, max_size=None, proxy=None, legacy=True, **kwargs
    )


def greeted(relay: Any, hello: Hello, source: str = "127.0.0.2") -> ClientConnection:
    return welcomed(relay, hello, source)[0]


def welcomed(relay: Any, hello: Hello, source: str = "127.0.0.2") -> tuple[ClientConnection, Welcome]:
    ws = websocket(relay, source)
    ws.send(control_frame(hello))
    reply = ws.recv(timeout=10)
    message = parse_control(memoryview(reply)[HEADER_SIZE:])
    assert isinstance(message, Welcome), message
    return ws, message


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True once the relay closes ``sock`` (whatever it sent first), within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if sock.recv(65536) == b"":
                return True
        except socket.timeout:
            return False
        except OSError:
            return True
    return False


def nested_tuples(depth: int) -> bytes:
    """The version-1 payload that crashed every decoder: a tuple in a tuple ... ``depth`` deep,
    each level an ext-3 value holding the next level's bytes."""
    data = msgpack.packb([1])
    for _ in range(depth):
        data = msgpack.packb(msgpack.ExtType(3, b"\x91" + data))
    return data


class RawPeer:
    """A peer on a raw socket, speaking WebSocket frames by hand: it reads only
    when told to, however much the relay sends."""

    def __init__(self, relay: Any, source: str, *, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.bind((source, 0))
        self.sock.connect((relay.host, relay.port))
        self.sock.sendall(UPGRADE + b"\r\n")
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed during the upgrade: {reply[:200]!r}")
            reply += chunk
        if not reply.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"upgrade refused: {reply[:200]!r}")

    def send(self, payload: bytes, opcode: int = 0x2) -> None:
        self.sock.sendall(Frame(Opcode(opcode), payload).serialize(mask=True))

    def recv(self) -> bytes:
        """The payload of the relay's next frame."""
        head = self._exactly(2)
        size = head[1] & 0x7F
        if size == 126:
            size = int.from_bytes(self._exactly(2), "big")
        elif size == 127:
            size = int.from_bytes(self._exactly(8), "big")
        return self._exactly(size)

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed by the relay")
            data += chunk
        return data


Answer = Callable[[int, int, Any], Any]  # (op, channel, request) -> answer value


class Refuse:
    """An answer that is an error record (sent as an ERROR frame)."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record


class ScriptedSimulator:
    """A simulator peer that answers each request with ``answer(op, channel, request)``
    (raw bytes are sent as the payload as they are, a ``Refuse`` as an ERROR frame),
    and may also send ``extra`` frames of its own after each answer. It runs in a
    thread until closed."""

    def __init__(self, relay: Any, key: str, answer: Answer, *, name: str = "scripted", max_envs: int = 64,
                 extra: Callable[[int, int, int], list[bytes]] | None = None) -> None:  # fmt: skip
        hello = Hello(role="simulator", api_key=key, name=name, max_envs=max_envs)
        self.ws, welcome = welcomed(relay, hello, source="127.0.0.1")
        self.peer_id = welcome.peer_id
        self.answer = answer
        self.extra = extra
        self.requests: list[tuple[int, int, int]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                frame = self.ws.recv()
                kind, op, channel, seq = unpack_header(frame)
                if kind != Kind.REQUEST:
                    continue
                self.requests.append((op, channel, seq))
                value = self.answer(op, channel, codec.unpackb(memoryview(frame)[HEADER_SIZE:]))
                if isinstance(value, Refuse):
                    self.ws.send(pack(Kind.ERROR, op, channel, seq, codec.packb(value.record)))
                    continue
                body = value if isinstance(value, bytes) else codec.packb(value)
                self.ws.send(pack(Kind.RESPONSE, op, channel, seq, body))
                for forged in self.extra(op, channel, seq) if self.extra else ():
                    self.ws.send(forged)
        except Exception:  # closed by the test or the relay
            return

    def close(self) -> None:
        self.ws.close()
        self._thread.join(10)


def request(ws: Any, op: int, channel: int, seq: int, arg: object, timeout: float = 30) -> dict:
    """One request from a raw trainer; the simulator's answer (or error record)."""
    ws.send(pack(Kind.REQUEST, op, channel, seq, codec.packb(arg)))
    deadline = time.monotonic() + timeout
    while True:
        frame = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        header = unpack_header(frame)
        if header.seq == seq and header.kind in (Kind.RESPONSE, Kind.ERROR):
            value = codec.unpackb(memoryview(frame)[HEADER_SIZE:])
            return value if header.kind == Kind.ERROR else {"code": "ok", "value": value}


def open_channel(ws: Any, seq: int) -> int:
    ws.send(pack(Kind.CONTROL, Op.NONE, 0, seq, encode_control(Open(envs=1))))
    while True:
        frame = ws.recv(timeout=30)
        if unpack_header(frame).seq == seq:
            return parse_control(memoryview(frame)[HEADER_SIZE:]).shards[0].channel


def forged_answer(op: int, channel: int, seq: int, value: Any) -> bytes:
    return pack(Kind.RESPONSE, op, channel, seq, codec.packb(value))


__all__ = [
    "Op",
    "RawPeer",
    "ScriptedSimulator",
    "UPGRADE",
    "closed_by_peer",
    "forged_answer",
    "greeted",
    "nested_tuples",
    "open_channel",
    "request",
    "rss_mb",
    "tcp",
    "websocket",
]

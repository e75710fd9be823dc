"""The synchronous WebSocket client the trainer and the simulator read in their own
threads (``transport/websocket.py``), against real servers on loopback: pings
answered while nobody reads, the heartbeat finding a silent peer, messages read
by the keeper kept in order, fragments, close codes, size limits, handshakes."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus
from websockets.frames import Close, CloseCode
from websockets.http11 import Response
from websockets.server import ServerProtocol
from websockets.sync.server import ServerConnection, serve

from remoterl_ray.transport.websocket import KEEPER_TICK, MAX_QUEUED, READ_SIZE, WebSocket


@contextmanager
def server(handler: Callable[[ServerConnection], None], **kwargs) -> Iterator[str]:
    """A websockets server on a free loopback port, serving ``handler`` in threads."""
    with serve(handler, "127.0.0.1", 0, compression=None, **kwargs) as srv:
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"ws://127.0.0.1:{srv.socket.getsockname()[1]}"
        finally:
            srv.shutdown()
            thread.join(timeout=10)


def failed_with(ws: WebSocket, timeout: float) -> Close:
    """The close frame this side sent when the connection failed under ``ws.recv``."""
    with pytest.raises(ConnectionClosedError) as caught:
        ws.recv(timeout=timeout)
    assert caught.value.sent is not None, caught.value
    return caught.value.sent


def test_pings_are_answered_while_nobody_reads():
    """The server pings every 0.1 s and closes a peer whose pong is 1 s late; the
    client reads nothing for three times that, then still gets its answer."""
    outcome: list[object] = []

    def handler(ws: ServerConnection) -> None:
        try:
            request = ws.recv(timeout=10)
            ws.send(b"answer to " + request)
            outcome.append("open")
        except ConnectionClosed as exc:
            outcome.append(exc)

    with server(handler, ping_interval=0.1, ping_timeout=1.0) as url:
        ws = WebSocket.connect(url, ping_interval=None)
        try:
            time.sleep(3.0)  # a long gradient update: no recv, no send
            ws.send(b"step")
            assert ws.recv(timeout=5) == b"answer to step"
        finally:
            ws.close()
    assert outcome == ["open"]


def test_messages_read_by_the_keeper_wait_in_order_and_fragments_are_joined():
    def handler(ws: ServerConnection) -> None:
        for i in range(3):
            ws.send(b"message %d" % i)
        ws.send([b"frag", b"ment", b"ed"])  # one message in three frames
        ws.recv(timeout=10)

    with server(handler) as url:
        ws = WebSocket.connect(url)
        try:
            time.sleep(4 * KEEPER_TICK)  # the keeper reads them while nobody does
            assert [ws.recv(timeout=5) for _ in range(4)] == [b"message 0", b"message 1", b"message 2", b"fragmented"]
            with pytest.raises(TimeoutError):
                ws.recv(timeout=0.05)
            ws.send(b"bye")
        finally:
            ws.close()


def test_messages_sent_together_arrive_whole_and_in_order():
    """``send_many`` writes several frames at once (one ``sendmsg``); one of them far
    larger than the socket's buffer goes out in parts, after the small ones before it."""
    big = os.urandom(4 * 1024 * 1024)
    messages = [b"first", big, b"", b"last"]

    def handler(ws: ServerConnection) -> None:
        for _ in messages:
            ws.send(ws.recv(timeout=10))

    with server(handler, max_size=8 * 1024 * 1024) as url:
        ws = WebSocket.connect(url, max_size=8 * 1024 * 1024)
        try:
            ws.send_many(messages)
            assert [ws.recv(timeout=10) for _ in messages] == messages
        finally:
            ws.close()


def test_the_servers_close_code_and_reason_reach_the_reader():
    def handler(ws: ServerConnection) -> None:
        ws.recv(timeout=10)
        ws.close(4001, "policy: go away")

    with server(handler) as url:
        ws = WebSocket.connect(url)
        try:
            ws.send(b"hello")
            with pytest.raises(ConnectionClosed) as caught:
                ws.recv(timeout=5)
            assert caught.value.rcvd is not None
            assert (caught.value.rcvd.code, caught.value.rcvd.reason) == (4001, "policy: go away")
            with pytest.raises(ConnectionClosed):
                ws.send(b"after close")
        finally:
            ws.close()


def test_a_message_above_max_size_closes_with_1009_before_it_is_kept():
    def handler(ws: ServerConnection) -> None:
        ws.send(b"x" * 5000)
        ws.recv(timeout=10)

    with server(handler) as url:
        ws = WebSocket.connect(url, max_size=4096)
        try:
            assert failed_with(ws, 5).code == CloseCode.MESSAGE_TOO_BIG
        finally:
            ws.close()


def server_frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    """One unmasked frame as a server sends it."""
    head = bytes([(0x80 if fin else 0) | opcode])
    if len(payload) < 126:
        return head + bytes([len(payload)]) + payload
    return head + bytes([126]) + len(payload).to_bytes(2, "big") + payload


def accept_upgrade(conn: socket.socket, extra: bytes = b"") -> None:
    """Answer one client's upgrade request with 101, and ``extra`` in the same write."""
    protocol = ServerProtocol()
    events: list = []
    while not events:
        protocol.receive_data(conn.recv(65536))
        events = protocol.events_received()
    protocol.send_response(protocol.accept(events[0]))
    conn.sendall(b"".join(protocol.data_to_send()) + extra)


@contextmanager
def raw_server(after: Callable[[socket.socket], None], extra: bytes = b"", rcvbuf: int | None = None) -> Iterator[str]:
    """Accepts one WebSocket handshake (then ``extra``), then runs ``after`` on the socket."""
    listener = socket.socket()
    if rcvbuf:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def run() -> None:
        conn, _ = listener.accept()
        with conn:
            try:
                accept_upgrade(conn, extra)
                after(conn)
            except OSError:
                pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"ws://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


@contextmanager
def silent_server() -> Iterator[tuple[str, threading.Event]]:
    """Accepts one WebSocket handshake, then never reads or writes again."""
    done = threading.Event()
    with raw_server(lambda conn: done.wait(30)) as url:
        try:
            yield url, done
        finally:
            done.set()


def test_the_heartbeat_finds_a_silent_peer_while_a_reader_waits():
    with silent_server() as (url, _):
        ws = WebSocket.connect(url, ping_interval=0.2, ping_timeout=0.4)
        try:
            started = time.monotonic()
            assert failed_with(ws, 30).reason == "keepalive ping timeout"
            assert time.monotonic() - started < 25  # the heartbeat, not the recv timeout, ended it
        finally:
            ws.close()


def test_a_refused_handshake_raises_the_status_and_a_mute_server_times_out():
    def refuse(connection, request):
        return connection.respond(403, "no\n")

    with server(lambda ws: None, process_request=refuse) as url:
        with pytest.raises(InvalidStatus) as caught:
            WebSocket.connect(url)
        assert isinstance(caught.value.response, Response) and caught.value.response.status_code == 403

    mute = socket.create_server(("127.0.0.1", 0))  # accepts TCP (the backlog) and never answers
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            WebSocket.connect(f"ws://127.0.0.1:{mute.getsockname()[1]}", open_timeout=0.5)
        assert time.monotonic() - started < 10
    finally:
        mute.close()


def test_a_peer_flooding_an_idle_client_is_held_back_not_buffered():
    """While nobody reads, the keeper reads ahead at most MAX_QUEUED messages (plus
    what one socket read holds); the rest wait in TCP, and nothing is lost."""
    count, size = 100, 1 << 20

    def handler(ws: ServerConnection) -> None:
        for i in range(count):
            ws.send(i.to_bytes(4, "big") + bytes(size))
        ws.recv(timeout=60)

    with server(handler, max_size=None) as url:
        ws = WebSocket.connect(url, max_size=2 * size)
        try:
            time.sleep(20 * KEEPER_TICK)
            assert len(ws._messages) <= MAX_QUEUED + READ_SIZE // size + 1
            got = [int.from_bytes(ws.recv(timeout=10)[:4], "big") for _ in range(count)]
            assert got == list(range(count))
            ws.send(b"done")
        finally:
            ws.close()


def test_a_relay_that_stops_reading_fails_sends_and_close_in_bounded_time():
    """Its window and our buffer fill: no write waits past the heartbeat's timeout,
    and closing gives up on the closing handshake instead of hanging."""
    stop = threading.Event()
    with raw_server(lambda conn: stop.wait(30), rcvbuf=4096) as url:
        ws = WebSocket.connect(url, ping_interval=0.2, ping_timeout=0.5)
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            for _ in range(1000):  # 1 GiB: far more than the buffers hold
                ws.send(bytes(1 << 20))
        assert time.monotonic() - started < 20
        started = time.monotonic()
        ws.close()
        assert time.monotonic() - started < 10
        stop.set()


def test_a_ping_flood_does_not_starve_the_heartbeat():
    """A relay streams pings, reads what we send and never answers our pings: the
    keeper answers them a bounded while per look, and still fails the connection."""
    stop = threading.Event()

    def flood(conn: socket.socket) -> None:
        threading.Thread(target=lambda: [conn.recv(1 << 20) for _ in iter(stop.is_set, True)], daemon=True).start()
        chunk = server_frame(0x9) * 4096
        while not stop.is_set():
            conn.sendall(chunk)

    with raw_server(flood) as url:
        ws = WebSocket.connect(url, ping_interval=0.3, ping_timeout=0.6)
        try:
            assert failed_with(ws, 30).reason == "keepalive ping timeout"
        finally:
            stop.set()
            ws.close()


def test_a_message_in_too_many_fragments_is_refused_with_1009():
    """Empty continuation frames add nothing to max_size: their count is bounded instead."""
    stop = threading.Event()

    def fragments(conn: socket.socket) -> None:
        conn.sendall(server_frame(0x2, b"x", fin=False))
        chunk = server_frame(0x0, fin=False) * 4096
        while not stop.is_set():
            conn.sendall(chunk)

    with raw_server(fragments) as url:
        ws = WebSocket.connect(url, max_size=1 << 20)
        try:
            assert failed_with(ws, 30).code == CloseCode.MESSAGE_TOO_BIG
        finally:
            stop.set()
            ws.close()


def test_a_close_frame_with_the_101_closes_the_connection_at_once():
    with raw_server(lambda conn: time.sleep(1), extra=server_frame(0x8, (1000).to_bytes(2, "big"))) as url:
        ws = WebSocket.connect(url)
        try:
            with pytest.raises(ConnectionClosed):
                ws.send(b"hello")
        finally:
            ws.close()


def test_a_text_frame_is_refused():
    with raw_server(lambda conn: time.sleep(1), extra=server_frame(0x1, b"text")) as url:
        ws = WebSocket.connect(url)
        try:
            assert failed_with(ws, 5).code == CloseCode.UNSUPPORTED_DATA
        finally:
            ws.close()

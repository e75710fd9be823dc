"""The synchronous WebSocket client the trainer and the simulator read in their own
threads (``transport/websocket.py``), against real servers on loopback: pings
answered while nobody reads, the heartbeat finding a silent peer, messages read
by the keeper kept in order, fragments, close codes, size limits, handshakes."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus
from websockets.frames import CloseCode
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
            with pytest.raises(ConnectionClosedError) as caught:
                ws.recv(timeout=5)
            assert caught.value.sent is not None and caught.value.sent.code == CloseCode.MESSAGE_TOO_BIG
        finally:
            ws.close()


@contextmanager
def silent_server() -> Iterator[tuple[str, threading.Event]]:
    """Accepts one WebSocket handshake, then never reads or writes again."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def run() -> None:
        conn, _ = listener.accept()
        protocol = ServerProtocol()
        events: list = []
        while not events:
            protocol.receive_data(conn.recv(65536))
            events = protocol.events_received()
        protocol.send_response(protocol.accept(events[0]))
        for chunk in protocol.data_to_send():
            conn.sendall(chunk)
        done.wait(30)
        conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"ws://127.0.0.1:{listener.getsockname()[1]}", done
    finally:
        done.set()
        thread.join(timeout=10)
        listener.close()


def test_the_heartbeat_finds_a_silent_peer_while_a_reader_waits():
    with silent_server() as (url, _):
        ws = WebSocket.connect(url, ping_interval=0.2, ping_timeout=0.4)
        try:
            started = time.monotonic()
            with pytest.raises(ConnectionClosedError) as caught:
                ws.recv(timeout=30)
            assert time.monotonic() - started < 25  # the heartbeat, not the recv timeout, ended it
            assert caught.value.sent is not None and caught.value.sent.reason == "keepalive ping timeout"
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

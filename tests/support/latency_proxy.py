"""A user-space TCP proxy that delays traffic: a "far away" region on loopback.

This kernel has no netem, so tests make distance here: every chunk is held
``delay`` seconds in each direction before it is passed on, in order, and
with ``rate`` (bytes a second) a thin link: each direction passes at most that
many bytes a second and reads no further ahead than a few chunks, so a sender
faster than that finds its writes waiting, as on a slow uplink.
:meth:`LatencyProxy.drop` cuts every connection through it at once (a reset
both ways, as a network failure looks to each end); new ones are accepted.
"""

from __future__ import annotations

import asyncio
import threading
import time


class LatencyProxy:
    def __init__(self, target_host: str, target_port: int, delay: float, rate: float | None = None) -> None:
        self.target = (target_host, target_port)
        self.delay = delay
        self.rate = rate
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="latency-proxy", daemon=True)
        self._writers: set[asyncio.StreamWriter] = set()
        self.dropped = 0  # connections cut by drop()

    def __enter__(self) -> LatencyProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("latency proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:  # end every pipe first: no task is left pending on a closed loop
            tasks = asyncio.all_tasks() - {asyncio.current_task()}
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def drop(self, timeout: float = 10.0) -> int:
        """Cut every open connection (both sides get a reset); returns how many were cut."""

        async def cut() -> int:
            pairs = len(self._writers) // 2
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()
            self.dropped += pairs
            return pairs

        return asyncio.run_coroutine_threadsafe(cut(), self._loop).result(timeout)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        self._writers.update((client_writer, upstream_writer))
        try:
            await asyncio.gather(
                self._pipe(client_reader, upstream_writer), self._pipe(upstream_reader, client_writer)
            )
        finally:
            self._writers.difference_update((client_writer, upstream_writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(4 if self.rate else 0)

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
                if self.rate:
                    await asyncio.sleep(len(data) / self.rate)

        sender = asyncio.create_task(deliver())
        try:
            while True:
                data = await reader.read(65536)
                await queue.put((time.monotonic() + self.delay, data))
                if not data:
                    break
            await sender
        except (OSError, asyncio.CancelledError):
            sender.cancel()
        finally:
            writer.close()


if __name__ == "__main__":  # a proxy in a process of its own: python latency_proxy.py HOST PORT DELAY
    import sys

    with LatencyProxy(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])) as proxy:
        print(proxy.port, flush=True)
        for line in sys.stdin:  # until the parent closes our stdin; "drop" cuts every connection
            if line.strip() == "drop":
                print(proxy.drop(), flush=True)

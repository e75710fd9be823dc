"""Hold N idle simulator connections open on a relay (used by bench/serve_path.py).

Each connection dials like a real peer (the replica's own address when
``GET /v1/route`` offers one, else the given URL), sends a real hello and
waits for its welcome; the websockets library answers the relay's pings.
Prints ``ready N direct=D`` once all are welcomed (D of them reached the
replica directly), then holds them until stdin closes, reading and dropping
whatever the relay sends them as a simulator would (detach notices when
channels placed on them close: a socket left unread stops answering pings and
the relay closes it). An optional fourth argument is the ``max_envs`` each one
declares (default 256, a simulator's own default); ``1`` makes a workspace of
many tiny simulators, the costliest shape for placement.

    python bench/idle_peers.py ws://127.0.0.1:8000 KEY 1000 [MAX_ENVS]
"""

from __future__ import annotations

import asyncio
import sys

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from remoterl_ray.protocol.affinity import SESSION_HEADER, session_id_for
from remoterl_ray.protocol.messages import Hello, control_frame
from remoterl_ray.transport import endpoint
from remoterl_ray.transport.discovery import direct_route


async def drain(ws: ClientConnection) -> None:
    try:
        async for _ in ws:
            pass
    except ConnectionClosed:
        pass


async def hold(url: str, key: str, count: int, max_envs: int = 256) -> None:
    gate = asyncio.Semaphore(32)  # connect in waves, as a fleet of simulators would
    sockets = []
    readers = []
    headers = {SESSION_HEADER: session_id_for(key)}
    direct = await asyncio.to_thread(direct_route, url, key)
    reached_directly = 0

    async def one(i: int) -> None:
        nonlocal reached_directly
        async with gate:
            try:
                if direct is None:
                    raise OSError("no direct route")
                ws = await connect(endpoint(direct), additional_headers=headers, open_timeout=3)
                reached_directly += 1
            except (OSError, TimeoutError):
                ws = await connect(endpoint(url), additional_headers=headers, open_timeout=60)
            await ws.send(control_frame(Hello(role="simulator", api_key=key, name=f"idle-{i}", max_envs=max_envs)))
            await asyncio.wait_for(ws.recv(), 60)
            sockets.append(ws)
            readers.append(asyncio.create_task(drain(ws)))

    await asyncio.gather(*(one(i) for i in range(count)))
    print(f"ready {len(sockets)} direct={reached_directly}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    await asyncio.gather(*readers, return_exceptions=True)


if __name__ == "__main__":
    max_envs = int(sys.argv[4]) if len(sys.argv) > 4 else 256
    asyncio.run(hold(sys.argv[1], sys.argv[2], int(sys.argv[3]), max_envs))

"""Relay capacity: frames forwarded per relay CPU-second, against a plain forwarder.

The figure an operator sizes a deployment by. ``--pairs`` trainer/simulator
pairs, each its own workspace, step 1-env CartPole flat out: the trainer
sends the very STEP request a remote CartPole step sends, the simulator
answers with a reply of the very size a CartPole step answer has. The load
runs in two generator processes (trainers, simulators) speaking the protocol
directly, so that it costs as little as possible beside the relay.

Side by side, interleaved rounds of:

* relay     -- the embedded remoterl relay (``remoterl relay``: hello and
               key check, placement, routing by channel, metering);
* floor     -- a plain forwarder on the relay's own server stack (uvicorn,
               uvloop, the websockets sans-I/O protocol, no compression): a
               bare ASGI app that pairs one trainer and one simulator by a
               byte in their first message and passes every message on as it
               is: no protocol, no checks, no FastAPI.

CPU time is read from each server process (``/proc/PID/stat``: user + system)
over the measuring window, and frames are counted by the trainers (a round
trip is two forwarded frames). Prints frames per CPU-second of each and the
CPU per frame of the relay relative to the floor.

    python bench/relay_capacity.py            # 3 rounds x 5 s per server (~1 minute)
    python bench/relay_capacity.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import time


from stepping import medians

from remoterl_ray.local import free_port, start_relay

TICKS = os.sysconf("SC_CLK_TCK")

# One process running many peers: trainers (step flat out, count round trips) or simulators (answer).
LOAD = r"""
import asyncio, sys, time
import websockets
from remoterl_ray.protocol import codec
from remoterl_ray.protocol.affinity import SESSION_HEADER, session_id_for
from remoterl_ray.protocol.frames import HEADER_SIZE, Kind, Op, pack, unpack_header
from remoterl_ray.protocol.messages import Hello, Open, control_frame, parse_control

role, url, mode, keys = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
REQUEST_PAYLOAD = codec.packb(1)
REPLY_SIZE = int(sys.argv[5])
counts = [0] * len(keys)

async def connect(i, key):
    if mode == "floor":
        ws = await websockets.connect(url, compression=None, max_size=None, proxy=None)
        await ws.send(bytes([ord(role[0]), i]))
        return ws, 1
    ws = await websockets.connect(url + "/ws", compression=None, max_size=None, proxy=None,
                                  additional_headers={SESSION_HEADER: session_id_for(key)})
    await ws.send(control_frame(Hello(role=role, api_key=key, max_envs=1)))
    await ws.recv()  # welcome
    if role == "simulator":
        return ws, 0
    while True:
        await ws.send(control_frame(Open(envs=1), seq=1))
        frame = await ws.recv()
        if unpack_header(frame).kind == Kind.CONTROL:
            return ws, parse_control(memoryview(frame)[HEADER_SIZE:]).shards[0].channel
        await asyncio.sleep(0.1)  # no simulator yet

async def trainer(i, key):
    ws, channel = await connect(i, key)
    seq = 0
    while True:
        seq = seq % 1_000_000 + 1
        await ws.send(pack(Kind.REQUEST, Op.STEP, channel, seq, REQUEST_PAYLOAD))
        await ws.recv()
        counts[i] += 1

async def simulator(i, key):
    ws, _ = await connect(i, key)
    reply = bytes(REPLY_SIZE - HEADER_SIZE)
    async for frame in ws:
        kind, op, channel, seq = unpack_header(frame)
        if kind == Kind.REQUEST:
            await ws.send(pack(Kind.RESPONSE, op, channel, seq, reply))

async def report():
    loop = asyncio.get_running_loop()
    while True:  # one line per request on stdin: the round trips so far
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        print(sum(counts), flush=True)

async def main():
    peer = trainer if role == "trainer" else simulator
    tasks = [asyncio.create_task(peer(i, key)) for i, key in enumerate(keys)]
    if role == "trainer":
        await report()
    else:
        await asyncio.gather(*tasks)

asyncio.run(main())
"""

FLOOR = r"""
import sys, uvicorn
peers = ({}, {})  # trainers' and simulators' send functions, by pair

async def app(scope, receive, send):
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    first = (await receive())["bytes"]
    mine = 0 if first[0] == ord("t") else 1
    peers[mine][first[1]] = send
    other = peers[1 - mine]
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await other[first[1]]({"type": "websocket.send", "bytes": message["bytes"]})

print("ready", flush=True)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), ws="websockets-sansio", ws_per_message_deflate=False,
            log_level="warning")
"""


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


class Load:
    """The two generator processes for one server; ``round_trips()`` asks the trainers."""

    def __init__(self, url: str, mode: str, keys: list[str], reply_size: int) -> None:
        joined = ",".join(keys)
        args = [url, mode, joined, str(reply_size)]
        self.sims = subprocess.Popen([sys.executable, "-c", LOAD, "simulator", *args])
        time.sleep(1.0)  # simulators online before trainers open
        self.trainers = subprocess.Popen([sys.executable, "-c", LOAD, "trainer", *args],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip

    def round_trips(self) -> int:
        assert self.trainers.stdin is not None and self.trainers.stdout is not None
        self.trainers.stdin.write("\n")
        self.trainers.stdin.flush()
        return int(self.trainers.stdout.readline())

    def stop(self) -> None:
        for proc in (self.trainers, self.sims):
            proc.kill()
            proc.wait()


def measure(load: Load, server_pid: int, seconds: float) -> float:
    """Frames forwarded per server CPU-second over ``seconds``."""
    trips, cpu = load.round_trips(), cpu_seconds(server_pid)
    time.sleep(seconds)
    trips, cpu = load.round_trips() - trips, cpu_seconds(server_pid) - cpu
    return 2 * trips / max(cpu, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring window per server per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a short smoke run, not a measurement")
    opts = parser.parse_args()
    if opts.quick:
        opts.pairs, opts.seconds, opts.rounds = 4, 1.0, 1
    reply_size = 83  # a remote 1-env CartPole step answer, header included (bench/core_path.py)

    keys = [secrets.token_hex(8) for _ in range(opts.pairs)]
    relay = start_relay(api_keys=keys)
    port = free_port()
    floor = subprocess.Popen([sys.executable, "-c", FLOOR, str(port)], stdout=subprocess.PIPE, text=True)
    loads: dict[str, Load] = {}
    try:
        assert floor.stdout is not None and floor.stdout.readline().strip() == "ready"
        time.sleep(1.0)  # uvicorn binds after the line
        loads["relay"] = Load(relay.url, "relay", keys, reply_size)
        loads["floor"] = Load(f"ws://127.0.0.1:{port}", "floor", keys, reply_size)
        pids = {"relay": relay.process.pid, "floor": floor.pid}
        time.sleep(2.0)  # every pair stepping
        rates: dict[str, list[float]] = {"relay": [], "floor": []}
        for _ in range(opts.rounds):
            for name, load in loads.items():
                rates[name].append(measure(load, pids[name], opts.seconds))
    finally:
        for load in loads.values():
            load.stop()
        floor.kill()
        floor.wait()
        relay.stop()
    median = medians(rates)
    print(f"{opts.pairs} trainer/simulator pairs stepping 1-env CartPole, "
          f"{opts.rounds} interleaved rounds x {opts.seconds:.0f} s per server")  # fmt: skip
    print(f"{'server':8} {'frames per CPU-second':>22}   rounds")
    for name, rate in median.items():
        print(f"{name:8} {rate:22,.0f}   {', '.join(f'{r:,.0f}' for r in rates[name])}")
    print(f"relay CPU per frame / floor's = {median['floor'] / median['relay']:.2f}   [<= 1.5]")


if __name__ == "__main__":
    main()

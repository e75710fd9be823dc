"""How big the dashboard's events get, and how long one takes, as idle simulators pile up.

Starts an embedded relay with an accounts store and an admin token, holds N
idle simulator connections (bench/idle_peers.py) for each N, and reads what
the page reads: one event of ``/dashboard/events`` (aggregate, the default) and
one snapshot of a single workspace (``?focus=``, the details on demand). Prints
their sizes, the full per-peer listing's (``/v1/cluster``) for comparison, and
the relay's time to answer a snapshot (median of 20).

    python bench/dashboard_events.py            # N = 10, 100, 1000
    python bench/dashboard_events.py 10 100     # other sizes
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from remoterl_ray.accounts.store import AccountStore
from remoterl_ray.local import start_relay
from remoterl_ray.relay.overview import MAX_EVENT_BYTES

TOKEN = "bench-admin-token-0123456789"
IDLE_PEERS = Path(__file__).resolve().parent / "idle_peers.py"


def first_event(client: httpx.Client) -> str:
    with client.stream("GET", "/dashboard/events") as events:
        return next(line for line in events.iter_lines() if line.startswith("data: {\"at\""))[6:]  # not the hello


def main(sizes: list[int]) -> None:
    root = Path(tempfile.mkdtemp(prefix="remoterl-bench-"))
    (root / "relay.yaml").write_text(f"admin_tokens:\n  bench: {TOKEN}\n")
    store = AccountStore(root / "relay.db")
    keys = {n: store.create_key(f"crowd{n}").key for n in sizes}
    relay = start_relay(extra_args=("--config", str(root / "relay.yaml"), "--db", str(root / "relay.db")))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    print(f"{'idle simulators':>15}  {'event (default)':>15}  {'focused':>9}  {'/v1/cluster':>11}  {'snapshot ms':>11}")
    try:
        with httpx.Client(base_url=relay.http_url, headers=headers, timeout=60.0) as client:
            for n in sizes:
                holder = subprocess.Popen(
                    [sys.executable, str(IDLE_PEERS), relay.url, keys[n], str(n)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                try:
                    assert holder.stdout is not None
                    ready = holder.stdout.readline().strip()
                    assert ready.startswith(f"ready {n}"), ready
                    event = first_event(client)
                    focused = client.get("/dashboard/api/snapshot", params={"focus": f"crowd{n}"}).content
                    cluster = client.get("/v1/cluster").content
                    times = []
                    for _ in range(20):
                        start = time.perf_counter()
                        client.get("/dashboard/api/snapshot").raise_for_status()
                        times.append((time.perf_counter() - start) * 1000)
                    print(f"{n:>15}  {len(event):>13,} B  {len(focused):>7,} B  {len(cluster):>9,} B"
                          f"  {statistics.median(times):>11.1f}")  # fmt: skip
                finally:
                    if holder.stdin:
                        holder.stdin.close()
                    holder.wait(60)
    finally:
        relay.stop()
    print(f"bound on the default event: {MAX_EVENT_BYTES:,} B (tests/test_dashboard_metrics.py checks 1,000)")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [10, 100, 1000])

"""How fast the operator dashboard sees a peer come and go (target: within 2 s).

Starts an embedded relay with an accounts store and an admin token, follows
the dashboard's own event stream (``/dashboard/events``, as the page does),
and times, for ROUNDS trainers: from the moment the trainer's hello is
welcomed to the first event that lists it ("appear"), and from its close to
the first event without it ("disappear"). Meanwhile a second trainer steps
a simulator flat out, so the relay is busy, not idle.

    python bench/dashboard_latency.py [ROUNDS]
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import gymnasium as gym
import httpx

import remoterl_ray
from remoterl_ray.accounts.store import AccountStore
from remoterl_ray.local import start_relay, start_simulator
from remoterl_ray.protocol.messages import Hello
from remoterl_ray.transport import RelayConnection

TOKEN = "bench-admin-token-0123456789"
TARGET = 2.0


class Watcher:
    """Follows the SSE stream; records when each peer id was first and last seen."""

    def __init__(self, url: str) -> None:
        self.first: dict[str, float] = {}
        self.gone: dict[str, float] = {}
        self.online: set[str] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._follow, args=(url,), daemon=True).start()

    def _follow(self, url: str) -> None:
        try:
            self._read(url)
        except httpx.HTTPError:  # the relay stopped at the end of the run
            pass

    def _read(self, url: str) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.stream("GET", f"{url}/dashboard/events", headers=headers, timeout=None) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data: "):
                    continue
                now = time.monotonic()
                snap = json.loads(line[6:])
                if "peers" not in snap:  # the hello event
                    continue
                ids = {peer["id"] for peer in snap["peers"]}  # all of them: a handful here
                with self._lock:
                    for peer in ids - self.online:
                        self.first.setdefault(peer, now)
                    for peer in self.online - ids:
                        self.gone.setdefault(peer, now)
                    self.online = ids

    def wait(self, table: dict[str, float], peer: str, timeout: float = 30.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if peer in table:
                    return table[peer]
            time.sleep(0.005)
        raise TimeoutError(f"{peer} not seen by the dashboard within {timeout}s")


def main(rounds: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="remoterl-bench-"))
    (root / "relay.yaml").write_text(f"admin_tokens:\n  bench: {TOKEN}\n")
    store = AccountStore(root / "relay.db")
    key = store.create_key("bench").key
    relay = start_relay(extra_args=("--config", str(root / "relay.yaml"), "--db", str(root / "relay.db")))
    sim = start_simulator(relay.url, key)
    stop = threading.Event()
    try:
        relay.admin_token = TOKEN
        relay.wait_for(None, "simulator", 1, workspace="bench")
        remoterl_ray.init(key, relay_url=relay.url, simulator_wait=10.0)
        env = gym.make("CartPole-v1")
        env.reset(seed=0)

        def busy() -> None:
            while not stop.is_set():
                if any(env.step(0)[2:4]):
                    env.reset()

        stepper = threading.Thread(target=busy, daemon=True)
        stepper.start()
        watcher = Watcher(relay.http_url)
        appear, disappear = [], []
        for _ in range(rounds):
            conn = RelayConnection.open(relay.url, Hello(role="trainer", api_key=key, name="bench"))
            welcomed = time.monotonic()
            peer = conn.welcome.peer_id
            appear.append(watcher.wait(watcher.first, peer) - welcomed)
            time.sleep(random.uniform(0.3, 1.3))  # out of step with the 1 s event period
            closed = time.monotonic()
            conn.close()
            disappear.append(watcher.wait(watcher.gone, peer) - closed)
            time.sleep(random.uniform(0.0, 1.0))
        stop.set()
        stepper.join(10)
    finally:
        stop.set()
        remoterl_ray.shutdown()
        sim.stop()
        relay.stop()
    print(f"dashboard latency over {rounds} trainers (busy relay), target {TARGET:.1f} s")
    print(f"{'':12}{'p50 s':>8}{'max s':>8}{'max / target':>14}")
    for label, values in (("appear", appear), ("disappear", disappear)):
        worst = max(values)
        print(f"{label:12}{statistics.median(values):8.3f}{worst:8.3f}{worst / TARGET:13.2f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)

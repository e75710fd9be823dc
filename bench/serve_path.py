"""Serve path benchmark: one remote CartPole step through each way of hosting the relay.

Side by side in one run, interleaved round by round:

* embedded -- ``remoterl relay`` (uvicorn, no Ray);
* serve    -- ``remoterl relay --serve --no-haproxy``: Serve's Python proxy
              with the ConsistentHashRouter;
* haproxy  -- ``remoterl relay --serve --haproxy --no-direct``: Serve's
              HAProxy ingress hashing the ``x-session-id`` header;
* direct   -- ``remoterl relay --serve --haproxy`` (the default): clients
              ask HAProxy which replica serves their workspace and dial that
              replica's own port, so frames skip HAProxy.

Each Serve variant runs its own local Ray cluster (HAProxy is chosen when Ray
starts), one relay replica, and one simulator process; a trainer in this
process steps a single ``CartPole-v1`` env. Then ``--idle`` idle simulator
connections of another workspace are opened on the default (direct) relay's
replica and the trainer's p99 step latency there is measured again.

    python bench/serve_path.py            # full run (~3 minutes on 2 cores)
    python bench/serve_path.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
from pathlib import Path


from stepping import pct, step_latencies

from remoterl_ray.local import LocalProcess, free_port, start_relay, start_simulator, wait_http
from remoterl_ray.trainer.remote_env import RemoteEnv
from remoterl_ray.trainer.session import TrainerSession
from remoterl_ray.trainer.settings import TrainerSettings

HERE = Path(__file__).parent


def serve_relay(key: str, idle_key: str, *flags: str) -> tuple[LocalProcess, str]:
    port = free_port()
    args = [sys.executable, "-m", "remoterl_ray", "relay", "--serve", "--port", str(port)]
    args += ["--api-key", key, "--api-key", idle_key, *flags]
    env = dict(os.environ, RAY_ADDRESS="local")  # a cluster of its own, not the other variant's
    for fixed_port in ("HAPROXY_METRICS_PORT", "HAPROXY_STATS_PORT", "FALLBACK_PROXY_HTTP_PORT"):
        env[f"RAY_SERVE_{fixed_port}"] = str(free_port())  # two HAProxy clusters on one machine
    proc = LocalProcess(args, env=env)
    wait_http(f"http://127.0.0.1:{port}/healthz", proc, timeout=180)
    return proc, f"ws://127.0.0.1:{port}"






def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="steps per variant per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--idle", type=int, default=1000, help="idle connections for the load check")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--variants", nargs="+", choices=["serve", "haproxy", "direct"],
                        default=["serve", "haproxy", "direct"], help="Serve ingresses to measure beside the embedded relay")
    opts = parser.parse_args()
    if opts.quick:
        opts.steps, opts.rounds, opts.idle = 200, 1, 50

    key, idle_key = secrets.token_hex(8), secrets.token_hex(8)
    procs: list[LocalProcess] = []
    sessions: list[TrainerSession] = []
    try:
        embedded = start_relay(api_keys=[key, idle_key])
        procs.append(embedded.process)
        urls = {"embedded": embedded.url}
        variants = {"serve": ["--no-haproxy"], "haproxy": ["--haproxy", "--no-direct"], "direct": ["--haproxy"]}
        for name, flags in variants.items():
            if name not in opts.variants:
                continue
            proc, urls[name] = serve_relay(key, idle_key, *flags)
            procs.append(proc)
        envs = {}
        for name, url in urls.items():
            procs.append(start_simulator(url, key))
            session = TrainerSession(TrainerSettings(relay_url=url, api_key=key))
            sessions.append(session)
            if session.links.wait_for_simulators(1, 60) < 1:
                raise RuntimeError(f"no simulator reached the {name} relay")
            envs[name] = RemoteEnv(session, "CartPole-v1")
            print(f"{name}: trainer connected to {session.links.conn.url}", flush=True)
            envs[name].reset(seed=0)
            step_latencies(envs[name], 200)  # warm up
        lat: dict[str, list[float]] = {name: [] for name in envs}
        for _ in range(opts.rounds):
            for name, env in envs.items():
                lat[name] += step_latencies(env, opts.steps)

        print(f"single-env CartPole step, {opts.rounds} interleaved rounds x {opts.steps} steps")
        print(f"{'relay':10} {'p50 ms':>8} {'p99 ms':>8} {'p50 vs embedded':>16}")
        base = pct(lat["embedded"], 50)
        for name, values in lat.items():
            print(f"{name:10} {pct(values, 50):8.3f} {pct(values, 99):8.3f} {pct(values, 50) / base:15.2f}x")

        if "direct" in envs:  # the load check: idle connections on the replica a trainer dials directly
            empty = step_latencies(envs["direct"], opts.steps * opts.rounds)
            holder = subprocess.Popen(
                [sys.executable, str(HERE / "idle_peers.py"), urls["direct"], idle_key, str(opts.idle)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                line = holder.stdout.readline() if holder.stdout else ""
                if not line.startswith("ready"):
                    raise RuntimeError(f"idle connections did not open: {line!r}")
                loaded = step_latencies(envs["direct"], opts.steps * opts.rounds)
            finally:
                if holder.stdin:
                    holder.stdin.close()
                holder.wait(60)
            print(f"\ndirect replica with {opts.idle} idle simulator connections (same replica, before/after)")
            print(
                f"  p99 empty {pct(empty, 99):.3f} ms, loaded {pct(loaded, 99):.3f} ms: {pct(loaded, 99) / pct(empty, 99):.2f}x"
            )
            print(f"  p50 empty {pct(empty, 50):.3f} ms, loaded {pct(loaded, 50):.3f} ms")
    finally:
        for session in sessions:
            session.close()
        for proc in reversed(procs):
            proc.stop(30)


if __name__ == "__main__":
    main()

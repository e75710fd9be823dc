"""Serve environments to trainers: run this on the machine where the simulator lives.

    REMOTERL_API_KEY=... REMOTERL_RELAY_URL=ws://relay-host:8000 python examples/simulator.py

Blocks until Ctrl-C / SIGTERM; reconnects by itself if the relay restarts.
"""

import remoterl

if __name__ == "__main__":
    remoterl.init(role="simulator")  # key and relay URL come from the environment

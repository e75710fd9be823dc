"""Placement at scale against a real relay: one workspace of 1,000 tiny
simulators (``max_envs=1``, the costliest shape to place on) whose trainer
opens and releases channels in a loop, while another workspace keeps stepping.

Real processes throughout: the relay, the 1,000 idle simulator connections
(bench/idle_peers.py), a raw trainer speaking the protocol, and for the
bystander a real simulator and a real trainer. Only functional facts are
asserted (answers, coded errors, metering, the relay staying up); the
latencies are measured by bench/placement.py.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import gymnasium as gym
import pytest
from conftest import SimulatorPool, idle_peers, init_trainer, new_key
from websockets.sync.client import connect

import remoterl_ray
from remoterl_ray.local import start_relay
from remoterl_ray.protocol import codec
from remoterl_ray.protocol.frames import HEADER_SIZE, Kind, unpack_header
from remoterl_ray.protocol.messages import Hello, Open, Opened, Release, Welcome, control_frame, parse_control

CROWD = 1_000
ROUNDS = 12
# Each round: (envs, per_simulator, then release everything held?): one env and a
# third of the crowd held together; every simulator at once; one env more than
# there is room for (refused); a split that spills onto further simulators.
SHAPES = [(1, 1, False), (CROWD // 3, 1, True), (CROWD, 1, True), (CROWD + 1, 1, True), (5, 2, True)]


@pytest.fixture(scope="module")
def scene():
    crowd_key, bystander_key = new_key("crowd"), new_key("bystander")
    relay = start_relay(api_keys=[crowd_key, bystander_key])
    pool = SimulatorPool(relay, bystander_key)
    try:
        pool.start(1)
        with idle_peers(relay.url, [crowd_key], CROWD, max_envs=1, timeout=240) as ready:
            assert len(ready) == 1 and ready[0].startswith(f"ready {CROWD} "), ready
            relay.wait_for(crowd_key, "simulator", CROWD, timeout=60)
            yield relay, crowd_key, bystander_key
    finally:
        pool.stop()
        relay.stop()


def recv_answer(ws, seq: int) -> tuple[str, Any]:
    """The relay's answer to control request ``seq``: ("opened", Opened) or ("error", record)."""
    deadline = time.monotonic() + 60
    while True:
        frame = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        header = unpack_header(frame)
        if header.seq != seq:
            continue  # e.g. a simulator count announced meanwhile
        payload = memoryview(frame)[HEADER_SIZE:]
        if header.kind == Kind.ERROR:
            return "error", codec.unpackb(payload)
        assert header.kind == Kind.CONTROL, header
        return "opened", parse_control(payload)


def churn(url: str, key: str, outcomes: Counter, problems: list[str]) -> None:
    """A raw trainer of the crowd's workspace: open every shape, release, again."""
    try:
        with connect(f"{url}/ws", compression=None, max_size=None, proxy=None, open_timeout=30) as ws:
            ws.send(control_frame(Hello(role="trainer", api_key=key)))
            assert isinstance(parse_control(memoryview(ws.recv(timeout=30))[HEADER_SIZE:]), Welcome)
            seq = 0
            for _ in range(ROUNDS):
                held: list[int] = []
                for envs, per_simulator, release in SHAPES:
                    seq += 1
                    ws.send(control_frame(Open(envs=envs, per_simulator=per_simulator), seq))
                    kind, answer = recv_answer(ws, seq)
                    if kind == "opened":
                        assert isinstance(answer, Opened)
                        if sum(s.envs for s in answer.shards) != envs:
                            problems.append(f"asked for {envs} envs, got {answer.shards}")
                        outcomes["opened"] += 1
                        held += [s.channel for s in answer.shards]
                    else:
                        outcomes[answer["code"]] += 1
                    if release and held:  # no answer; applied before this trainer's next open
                        ws.send(control_frame(Release(channels=held)))
                        held = []
    except Exception as exc:  # reported by the test, with the outcomes so far
        problems.append(f"{type(exc).__name__}: {exc}")


def test_a_crowded_workspace_opening_in_a_loop_does_not_stop_another(scene):
    relay, crowd_key, bystander_key = scene
    assert init_trainer(relay, bystander_key)
    try:
        env = gym.make("CartPole-v1")
        env.reset(seed=0)
        outcomes: Counter = Counter()
        problems: list[str] = []
        attacker = threading.Thread(target=churn, args=(relay.url, crowd_key, outcomes, problems), daemon=True)
        attacker.start()
        steps = 0
        deadline = time.monotonic() + 240
        while attacker.is_alive() and time.monotonic() < deadline:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            steps += 1
            assert reward == 1.0
            if terminated or truncated:
                env.reset()
        attacker.join(timeout=30)
        assert not attacker.is_alive(), "the crowd's trainer did not finish in time"
        assert not problems, problems
        # Every open got an answer: placed in full, or refused with a code (only the
        # shape asking for more than the crowd's room is refused).
        assert outcomes == {"opened": ROUNDS * (len(SHAPES) - 1), "capacity": ROUNDS}, outcomes
        assert steps > 0
        bystander = relay.peers(bystander_key, "trainer")
        assert [p["env_steps"] for p in bystander] == [steps]  # every step metered
        # Releases carry no answer: wait until the relay has taken them all.
        deadline = time.monotonic() + 30
        while True:
            crowd = relay.peers(crowd_key, "simulator")
            if sum(p["hosted_envs"] for p in crowd) == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(crowd) == CROWD and sum(p["hosted_envs"] for p in crowd) == 0
        assert relay.process.alive()
        env.step(0)  # still stepping after the storm
    finally:
        remoterl_ray.shutdown()

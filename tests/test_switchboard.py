"""The relay's placement rules, checked directly on the switchboard.

The switchboard is pure bookkeeping over peers; here its peers record the
frames they would be sent instead of owning sockets (the end-to-end tests
cover the sockets).
"""

from __future__ import annotations

import asyncio

import pytest

from remoterl_ray.protocol import codec
from remoterl_ray.protocol.errors import NoSimulatorError
from remoterl_ray.protocol.frames import HEADER_SIZE, Kind, unpack_header
from remoterl_ray.protocol.messages import Open
from remoterl_ray.relay.switchboard import Peer, Switchboard


def peer(role: str, name: str, workspace: str = "w", max_envs: int = 256) -> Peer:
    sent: list[bytes] = []

    async def send(frame: bytes) -> None:
        sent.append(frame)

    p = Peer(id=name, role=role, workspace=workspace, name=name, send_raw=send, max_envs=max_envs)
    p.sent = sent  # type: ignore[attr-defined]
    return p


def board_with(sims: int, **kw) -> tuple[Switchboard, Peer, list[Peer]]:
    board = Switchboard()
    trainer = peer("trainer", "t")
    simulators = [peer("simulator", f"s{i}", **kw) for i in range(sims)]

    async def setup() -> None:
        await board.join(trainer)
        for s in simulators:
            await board.join(s)

    asyncio.run(setup())
    return board, trainer, simulators


@pytest.mark.parametrize(
    ("sims", "envs", "per_sim", "expected"),
    [
        (2, 1, 2, [1]),
        (2, 4, 2, [2, 2]),
        (4, 8, 2, [2, 2, 2, 2]),
        (4, 5, 2, [2, 2, 1]),
        (2, 9, 2, [5, 4]),  # too few simulators: spread over those there are, never refused
        (3, 32, 8, [11, 11, 10]),
        (1, 64, 2, [64]),
        (8, 3, 1, [1, 1, 1]),
    ],
)
def test_envs_spread_with_at_most_per_sim_while_there_are_enough(sims, envs, per_sim, expected):
    board, trainer, _ = board_with(sims)
    opened = board.open(trainer, Open(envs=envs, per_simulator=per_sim))
    assert sorted((s.envs for s in opened.shards), reverse=True) == expected
    assert sum(s.envs for s in opened.shards) == envs
    assert len({s.simulator for s in opened.shards}) == len(expected)


def test_least_loaded_simulators_are_chosen_first():
    board, trainer, sims = board_with(3)
    first = board.open(trainer, Open(envs=2, per_simulator=2)).shards
    second = board.open(trainer, Open(envs=2, per_simulator=2)).shards
    third = board.open(trainer, Open(envs=2, per_simulator=2)).shards
    assert len({first[0].simulator, second[0].simulator, third[0].simulator}) == 3


def test_simulator_capacity_is_respected_and_overflow_is_a_capacity_error():
    board, trainer, sims = board_with(2, max_envs=3)
    opened = board.open(trainer, Open(envs=6, per_simulator=1))
    assert sorted(s.envs for s in opened.shards) == [3, 3]
    with pytest.raises(NoSimulatorError) as info:
        board.open(trainer, Open(envs=1, per_simulator=1))
    assert info.value.code.value == "capacity"


def test_no_simulator_is_a_coded_error_and_workspaces_are_separate():
    board, trainer, _ = board_with(2)
    stranger = peer("trainer", "x", workspace="other")
    asyncio.run(board.join(stranger))
    with pytest.raises(NoSimulatorError):
        board.open(stranger, Open(envs=1))


def test_simulator_leaving_tells_each_trainer_on_its_channels():
    board, trainer, sims = board_with(2)
    opened = board.open(trainer, Open(envs=4, per_simulator=2))
    gone = next(s for s in sims if s.id == opened.shards[0].simulator)
    trainer.sent.clear()
    asyncio.run(board.leave(gone))
    errors = [f for f in trainer.sent if unpack_header(f).kind == Kind.ERROR]
    assert [unpack_header(f).channel for f in errors] == [opened.shards[0].channel]
    assert codec.unpackb(errors[0][HEADER_SIZE:])["code"] == "simulator_gone"
    assert opened.shards[0].channel not in board.channels
    assert opened.shards[1].channel in board.channels


def test_trainer_leaving_detaches_its_channels_on_simulators():
    board, trainer, sims = board_with(1)
    opened = board.open(trainer, Open(envs=3, per_simulator=8))
    asyncio.run(board.leave(trainer))
    assert sims[0].hosted_envs == 0 and not board.channels
    detach = [codec.unpackb(f[HEADER_SIZE:]) for f in sims[0].sent if unpack_header(f).kind == Kind.CONTROL]
    assert {"op": "detach", "channel": opened.shards[0].channel} in detach

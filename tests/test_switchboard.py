"""The relay's placement rules, checked directly on the switchboard.

The switchboard is pure bookkeeping over peers; here its peers record the
frames they would be sent instead of owning sockets (the end-to-end tests
cover the sockets).
"""

from __future__ import annotations

import asyncio
import random

import pytest

from remoterl_ray.protocol import codec
from remoterl_ray.protocol.errors import ErrorCode, NoSimulatorError, ProtocolError, RemoteRLError
from remoterl_ray.protocol.frames import HEADER_SIZE, MORE, Kind, Op, unpack_header
from remoterl_ray.protocol.messages import Open
from remoterl_ray.relay.switchboard import ELIGIBLE, Peer, Presence, Seat, Switchboard


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
    return joined(board, trainer, simulators)


def joined(board: Switchboard, trainer: Peer, simulators: list[Peer]) -> tuple[Switchboard, Peer, list[Peer]]:
    """``board`` with ``trainer``, then each of ``simulators``, joined in that order."""

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
    opened = asyncio.run(board.open(trainer, Open(envs=envs, per_simulator=per_sim)))
    assert sorted((s.envs for s in opened.shards), reverse=True) == expected
    assert sum(s.envs for s in opened.shards) == envs
    assert len({s.simulator for s in opened.shards}) == len(expected)


def test_least_loaded_simulators_are_chosen_first():
    board, trainer, sims = board_with(3)
    first = asyncio.run(board.open(trainer, Open(envs=2, per_simulator=2))).shards
    second = asyncio.run(board.open(trainer, Open(envs=2, per_simulator=2))).shards
    third = asyncio.run(board.open(trainer, Open(envs=2, per_simulator=2))).shards
    assert len({first[0].simulator, second[0].simulator, third[0].simulator}) == 3


def test_simulator_capacity_is_respected_and_overflow_is_a_capacity_error():
    board, trainer, sims = board_with(2, max_envs=3)
    opened = asyncio.run(board.open(trainer, Open(envs=6, per_simulator=1)))
    assert sorted(s.envs for s in opened.shards) == [3, 3]
    with pytest.raises(NoSimulatorError) as info:
        asyncio.run(board.open(trainer, Open(envs=1, per_simulator=1)))
    assert info.value.code.value == "capacity"


def test_no_simulator_is_a_coded_error_and_workspaces_are_separate():
    board, trainer, _ = board_with(2)
    stranger = peer("trainer", "x", workspace="other")
    asyncio.run(board.join(stranger))
    with pytest.raises(NoSimulatorError):
        asyncio.run(board.open(stranger, Open(envs=1)))


def test_simulator_leaving_tells_each_trainer_on_its_channels():
    board, trainer, sims = board_with(2)
    opened = asyncio.run(board.open(trainer, Open(envs=4, per_simulator=2)))
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
    opened = asyncio.run(board.open(trainer, Open(envs=3, per_simulator=8)))
    asyncio.run(board.leave(trainer))
    assert sims[0].hosted_envs == 0 and not board.channels
    detach = [codec.unpackb(f[HEADER_SIZE:]) for f in sims[0].sent if unpack_header(f).kind == Kind.CONTROL]
    assert {"op": "detach", "channel": opened.shards[0].channel} in detach


# -- placement cost, fairness and consistency ------------------------------


class Watch:
    """Which simulators placement reads: any scan over a workspace shows up here."""

    on = False
    seen: set[str] = set()


class WatchedPeer(Peer):
    """A simulator that notes every attribute read while the watch is on."""

    def __getattribute__(self, name: str):
        if Watch.on:
            Watch.seen.add(object.__getattribute__(self, "id"))
        return object.__getattribute__(self, name)


def watched(board: Switchboard, trainer: Peer, request: Open) -> tuple[set[str], int]:
    """Open ``request`` on ``board``: (simulators read, heap entries looked at)."""
    pool = board.workspaces[trainer.workspace].pool
    before = pool.examined
    Watch.seen, Watch.on = set(), True
    try:
        opened = asyncio.run(board.open(trainer, request))
    finally:
        Watch.on = False
    assert sum(s.envs for s in opened.shards) == request.envs
    return Watch.seen, pool.examined - before


def big_board(sims: int, max_envs: int = 1, **kw) -> tuple[Switchboard, Peer, list[Peer]]:
    board = Switchboard(**kw)
    trainer = peer("trainer", "t")

    async def noop(frame: bytes) -> None:
        return None

    simulators = [
        WatchedPeer(id=f"s{i}", role="simulator", workspace="w", name="", send_raw=noop, max_envs=max_envs)
        for i in range(sims)
    ]
    return joined(board, trainer, simulators)


def assert_consistent(board: Switchboard) -> None:
    """Every count the switchboard keeps agrees with its channels."""
    hosted: dict[str, int] = {}
    mine: dict[tuple[str, str], int] = {}
    for channel in board.channels.values():
        assert channel.placing is None
        assert channel.id in channel.trainer.channels and channel.id in channel.simulator.channels
        assert board.workspaces[channel.simulator.workspace].simulators.get(channel.simulator.id) is channel.simulator
        hosted[channel.simulator.id] = hosted.get(channel.simulator.id, 0) + channel.envs
        key = (channel.trainer.id, channel.simulator.id)
        mine[key] = mine.get(key, 0) + channel.envs
    assert board._mine == mine
    for ws in board.workspaces.values():
        sims = ws.simulators.values()
        assert sum(s.hosted_envs for s in sims) == sum(hosted.values())
        pool = ws.pool
        assert set(pool.slots) == set(ws.simulators)
        live = [e[2] for e in pool.heap if e[2].entry is e]
        ready = [slot for slot in pool.slots.values() if slot.seat is Seat.READY]
        assert sorted(id(s) for s in live) == sorted(id(s) for s in ready)
        assert pool.ready == len(ready) and pool.room == sum(s.room for s in ready)
        assert pool.online == sum(1 for slot in pool.slots.values() if slot.seat in ELIGIBLE)
        assert not [slot for slot in pool.slots.values() if slot.seat is Seat.HELD]
        for s in sims:
            assert s.hosted_envs == hosted.get(s.id, 0) <= s.max_envs
            assert len(s.channels) == sum(1 for c in board.channels.values() if c.simulator is s)
        assert pool.movers <= set(ws.simulators)
        assert all(ws.simulators[m].presence in (Presence.MOVING, Presence.GONE) for m in pool.movers)
        assert not [s for s in sims if s.presence is Presence.MOVING and s.id not in pool.movers]


@pytest.mark.parametrize("sims", [1_000, 10_000])
def test_one_open_reads_a_logarithmic_number_of_simulators(sims):
    board, trainer, _ = big_board(sims, max_channels_per_trainer=sims)
    seen, examined = watched(board, trainer, Open(envs=1, per_simulator=1))
    assert len(seen) <= 64 and examined <= 64, (len(seen), examined)
    # Half of them busy, the rest idle: the next open still reads only a few.
    asyncio.run(board.open(trainer, Open(envs=sims // 2, per_simulator=1)))
    seen, examined = watched(board, trainer, Open(envs=1, per_simulator=1))
    assert len(seen) <= 64 and examined <= 64, (len(seen), examined)
    assert_consistent(board)


def test_a_thousand_opens_and_releases_stay_proportional():
    board, trainer, sims = big_board(10_000, max_envs=2)
    other = peer("trainer", "u")
    asyncio.run(board.join(other))
    pool = board.workspaces["w"].pool
    before = pool.examined
    held: list[int] = []
    worst = 0
    for i in range(1_000):
        who = trainer if i % 3 else other
        seen, _ = watched(board, who, Open(envs=1 + i % 4, per_simulator=1 + i % 2))
        worst = max(worst, len(seen))
        held.extend(sorted(who.channels - set(held)))
        if i % 2:  # release the oldest of someone's channels now and then
            channel = board.channels[held.pop(0)]
            Watch.seen, Watch.on = set(), True
            asyncio.run(board.release(channel.trainer, [channel.id]))
            Watch.on = False
            worst = max(worst, len(Watch.seen))
    # 1,000 opens of at most 4 shards each, 500 releases: a handful of entries per operation.
    assert pool.examined - before <= 8 * 1_000, pool.examined - before
    assert worst <= 64, worst
    assert_consistent(board)


def sized_board(*max_envs: int) -> tuple[Switchboard, Peer, list[Peer]]:
    """A trainer and one simulator per entry, declaring that ``max_envs``."""
    board = Switchboard()
    trainer = peer("trainer", "t")
    sims = [peer("simulator", f"s{i}", max_envs=m) for i, m in enumerate(max_envs)]

    async def setup() -> None:
        await board.join(trainer)
        for s in sims:
            await board.join(s)

    asyncio.run(setup())
    return board, trainer, sims


def test_full_simulators_spill_and_exhaustion_is_a_capacity_error():
    board, trainer, sims = sized_board(2, 2, 8)
    opened = asyncio.run(board.open(trainer, Open(envs=6, per_simulator=2)))
    # ceil(6 / 2) = 3 simulators, 2 each: the even split fits.
    assert sorted((s.simulator, s.envs) for s in opened.shards) == [("s0", 2), ("s1", 2), ("s2", 2)]
    opened = asyncio.run(board.open(trainer, Open(envs=4, per_simulator=1)))
    # s0 and s1 are full: everything goes where there is room.
    assert [(s.simulator, s.envs) for s in opened.shards] == [("s2", 4)]
    pool = board.workspaces["w"].pool
    before = pool.examined
    with pytest.raises(NoSimulatorError) as info:
        asyncio.run(board.open(trainer, Open(envs=3, per_simulator=1)))
    assert info.value.code.value == "capacity" and "room for 2 more envs" in info.value.message
    assert pool.examined == before  # refused from a kept count, not by searching
    assert_consistent(board)


def test_spill_goes_to_further_simulators_only_where_one_is_full():
    board, trainer, _ = sized_board(1, 1, 256)
    opened = asyncio.run(board.open(trainer, Open(envs=5, per_simulator=2)))
    # ceil(5 / 2) = 3 simulators; the two with room for one are full after one each.
    assert [(s.simulator, s.envs) for s in opened.shards] == [("s0", 1), ("s1", 1), ("s2", 3)]
    board, trainer, _ = sized_board(1, 1, 1, 256)
    opened = asyncio.run(board.open(trainer, Open(envs=4, per_simulator=2)))
    # 2 simulators chosen (s0, s1), both full at one env: spill onto s2, then s3.
    assert [(s.simulator, s.envs) for s in opened.shards] == [("s0", 1), ("s1", 1), ("s2", 1), ("s3", 1)]
    assert_consistent(board)


def test_moving_departed_and_dead_simulators_are_never_chosen():
    board, trainer, sims = board_with(4)
    board.mark_moving(sims[0])
    asyncio.run(board.leave(sims[1]))
    sims[2].presence = Presence.GONE  # its send failed; its handler has not called leave yet
    assert board.simulator_count("w") == 2  # s0 moves away, s1 left
    sims[0].presence = Presence.GONE  # the mover's send fails too: not counted twice
    assert board.simulator_count("w") == 2
    opened = asyncio.run(board.open(trainer, Open(envs=3, per_simulator=1)))
    assert {s.simulator for s in opened.shards} == {"s3"}
    assert board.find("s1") is None and board.find("s3") is sims[3]
    asyncio.run(board.leave(sims[2]))
    asyncio.run(board.leave(sims[0]))
    assert board.simulator_count("w") == 1
    assert_consistent(board)
    board.mark_moving(sims[3])
    with pytest.raises(NoSimulatorError) as info:
        asyncio.run(board.open(trainer, Open(envs=1)))
    assert info.value.code.value == "no_simulator"
    assert board.simulator_count("w") == 0
    assert_consistent(board)


def test_a_trainer_holds_at_most_max_channels_per_trainer():
    board = Switchboard(max_channels_per_trainer=3)
    trainer = peer("trainer", "t")
    sims = [peer("simulator", f"s{i}") for i in range(8)]

    async def setup() -> None:
        await board.join(trainer)
        for s in sims:
            await board.join(s)

    asyncio.run(setup())
    asyncio.run(board.open(trainer, Open(envs=2, per_simulator=1)))
    with pytest.raises(NoSimulatorError) as info:
        asyncio.run(board.open(trainer, Open(envs=2, per_simulator=1)))
    assert info.value.code.value == "capacity"
    assert "at most 3 channels" in info.value.message and "max_channels_per_trainer" in info.value.message
    assert len(trainer.channels) == 2 and sum(s.hosted_envs for s in sims) == 2  # nothing left half placed
    asyncio.run(board.open(trainer, Open(envs=5, per_simulator=8)))  # one more channel still fits
    with pytest.raises(NoSimulatorError):
        asyncio.run(board.open(trainer, Open(envs=1)))
    asyncio.run(board.release(trainer, [min(trainer.channels)]))
    asyncio.run(board.open(trainer, Open(envs=1)))
    assert len(trainer.channels) == 3
    assert_consistent(board)


def test_a_large_open_and_its_release_yield_to_the_loop():
    board, trainer, _ = big_board(3_000)
    turns = 0

    async def scenario() -> None:
        nonlocal turns
        done = asyncio.Event()

        async def other_workspace() -> None:
            nonlocal turns
            while not done.is_set():
                turns += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(other_workspace())
        await asyncio.sleep(0)
        turns = 0
        opened = await board.open(trainer, Open(envs=2_000, per_simulator=1))
        # 2,000 heap entries looked at and 2,000 shards placed: a turn for others every YIELD_EVERY.
        assert turns >= 4_000 // Switchboard.YIELD_EVERY - 1, turns
        assert len(opened.shards) == 2_000
        turns = 0
        await board.release(trainer, [s.channel for s in opened.shards])
        # Each closed channel sends a frame: a turn every CLOSES_PER_TURN of them.
        assert turns >= 2_000 // Switchboard.CLOSES_PER_TURN - 1, turns
        done.set()
        await task

    asyncio.run(scenario())
    assert not board.channels
    assert_consistent(board)


@pytest.mark.parametrize("after", range(8))  # the open below takes 8 turns: 4 simulators picked, 4 placed
def test_a_simulator_leaving_while_an_open_is_placed_is_replaced(after):
    board, trainer, sims = board_with(5, max_envs=4)
    board.YIELD_EVERY = 1  # a turn for the loop at every step, so the departure lands mid-open

    async def scenario():
        task = asyncio.create_task(board.open(trainer, Open(envs=12, per_simulator=3)))
        for _ in range(after):
            await asyncio.sleep(0)
        assert not task.done()
        await board.leave(sims[0])
        return await task

    trainer.sent.clear()
    opened = asyncio.run(scenario())
    assert sum(s.envs for s in opened.shards) == 12
    assert "s0" not in {s.simulator for s in opened.shards}
    assert all(board.channels[s.channel].envs == s.envs for s in opened.shards)
    # The trainer was never told about a channel it had not been given yet.
    assert not [f for f in trainer.sent if unpack_header(f).kind == Kind.ERROR]
    assert_consistent(board)


@pytest.mark.parametrize("after", [0, 2, 5, 9])
def test_a_cancelled_open_leaves_nothing_behind(after):
    board, trainer, sims = board_with(6, max_envs=2)
    board.YIELD_EVERY = 1

    async def scenario() -> None:
        task = asyncio.create_task(board.open(trainer, Open(envs=10, per_simulator=2)))
        for _ in range(after):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert not board.channels and not trainer.channels and all(s.hosted_envs == 0 for s in sims)
    assert board.workspaces["w"].pool.room == 12
    assert_consistent(board)


def test_interleaved_opens_releases_leaves_and_moves_stay_consistent():
    board, first, sims = board_with(40, max_envs=6)
    board.YIELD_EVERY = 3
    trainers = [first, *(peer("trainer", f"t{i}") for i in range(3))]
    rng = random.Random(7)
    outcomes: list[str] = []

    async def trainer_loop(t: Peer) -> None:
        for _ in range(40):
            try:
                opened = await board.open(t, Open(envs=rng.randint(1, 30), per_simulator=rng.randint(1, 4)))
                outcomes.append("opened")
                assert all(s.simulator != "gone" for s in opened.shards)
            except NoSimulatorError as exc:
                outcomes.append(exc.code.value)
            if t.channels and rng.random() < 0.6:
                await board.release(t, rng.sample(sorted(t.channels), k=min(len(t.channels), rng.randint(1, 8))))

    async def churn() -> None:
        for i in range(30):
            await asyncio.sleep(0)
            present = [s for s in sims if s.presence is Presence.ONLINE]
            victim = rng.choice(present)
            if i % 3 == 0:
                board.mark_moving(victim)
            elif i % 3 == 1:
                await board.leave(victim)
            else:
                newcomer = peer("simulator", f"n{i}", max_envs=6)
                sims.append(newcomer)
                await board.join(newcomer)

    async def scenario() -> None:
        for t in trainers[1:]:
            await board.join(t)
        await asyncio.gather(churn(), *(trainer_loop(t) for t in trainers))

    asyncio.run(scenario())
    assert set(outcomes) <= {"opened", "capacity", "no_simulator"} and "opened" in outcomes
    assert_consistent(board)
    total = sum(c.envs for c in board.channels.values())
    assert total == sum(s.hosted_envs for s in board.workspaces["w"].simulators.values())
    for s in sims:
        if s.presence is Presence.MOVING:  # no channel made after it was asked to move
            assert all(board.channels[c].simulator is s for c in s.channels)


def test_stale_heap_entries_are_compacted_away():
    board, trainer, sims = board_with(10, max_envs=1_000)
    pool = board.workspaces["w"].pool
    for _ in range(300):
        asyncio.run(board.open(trainer, Open(envs=1, per_simulator=100)))
    for channel_id in sorted(trainer.channels):  # each release keys a simulator again: one stale entry
        asyncio.run(board.release(trainer, [channel_id]))
        assert len(pool.heap) <= 2 * pool.ready + 65
    assert pool.stale < 65 and pool.room == 10 * 1_000
    assert_consistent(board)


def test_simulators_where_this_trainer_already_has_per_simulator_envs_come_last():
    board, trainer, sims = board_with(3)
    other = peer("trainer", "u")
    asyncio.run(board.join(other))
    asyncio.run(board.open(trainer, Open(envs=2, per_simulator=2)))  # s0: 2 of the trainer's
    asyncio.run(board.open(other, Open(envs=6, per_simulator=3)))  # s1, s2: 3 each of the other's
    assert [s.hosted_envs for s in sims] == [2, 3, 3]
    # s0 is the least loaded, but the trainer has its per_simulator there already.
    opened = asyncio.run(board.open(trainer, Open(envs=2, per_simulator=2)))
    assert [(s.simulator, s.envs) for s in opened.shards] == [("s1", 2)]
    # With a higher per_simulator it has room for more on s0, the least loaded again.
    opened = asyncio.run(board.open(trainer, Open(envs=1, per_simulator=3)))
    assert [(s.simulator, s.envs) for s in opened.shards] == [("s0", 1)]
    # per_simulator=1: s0 (tied least loaded) and s1 hold its envs already; s2 does not.
    opened = asyncio.run(board.open(trainer, Open(envs=1, per_simulator=1)))
    assert [(s.simulator, s.envs) for s in opened.shards] == [("s2", 1)]
    # At its per_simulator everywhere: then simply the least loaded.
    assert [s.hosted_envs for s in sims] == [3, 5, 4]
    opened = asyncio.run(board.open(trainer, Open(envs=1, per_simulator=1)))
    assert [(s.simulator, s.envs) for s in opened.shards] == [("s0", 1)]
    assert_consistent(board)


def reference_plan(board: Switchboard, trainer: Peer, request: Open) -> list[tuple[str, int]] | str:
    """The placement rules written plainly, looking at everything (O(n) and more):
    what ``open`` must give, as [(simulator, envs)] in order, or the error code."""
    ws = board.workspaces[trainer.workspace]
    online = [s for s in ws.simulators.values() if s.presence is Presence.ONLINE]
    if not online:
        return "no_simulator"
    if sum(s.max_envs - s.hosted_envs for s in online) < request.envs:
        return "capacity"
    mine = {s.id: 0 for s in online}
    for channel in board.channels.values():
        if channel.trainer is trainer and channel.simulator.id in mine:
            mine[channel.simulator.id] += channel.envs
    order = sorted(
        (s for s in online if s.hosted_envs < s.max_envs),
        key=lambda s: (mine[s.id] >= request.per_simulator, s.hosted_envs, s.join_order),
    )
    wanted = min(len(online), -(-request.envs // request.per_simulator))
    chosen, spare = order[:wanted], order[wanted:]
    plan = {s.id: 0 for s in chosen}
    room = {s.id: s.max_envs - s.hosted_envs for s in order}
    left = request.envs
    while left:  # rounds of an equal share each, until every chosen one is full
        pool = [s for s in chosen if plan[s.id] < room[s.id]]
        if not pool:
            break
        share = max(1, left // len(pool))
        for s in pool:
            take = min(share, room[s.id] - plan[s.id], left)
            plan[s.id] += take
            left -= take
    for s in spare:  # then fill further simulators one by one
        if not left:
            break
        plan[s.id] = min(room[s.id], left)
        left -= plan[s.id]
    return [(sid, n) for sid, n in plan.items() if n]


def test_placement_follows_the_plainly_written_rules_on_random_histories():
    rng = random.Random(3)
    for _ in range(300):
        board, trainer, sims = sized_board(*(rng.choice([1, 2, 3, 5, 256]) for _ in range(rng.randint(1, 12))))
        other = peer("trainer", "u")
        asyncio.run(board.join(other))
        for _ in range(rng.randint(1, 10)):
            who = rng.choice([trainer, other])
            request = Open(envs=rng.randint(1, 40), per_simulator=rng.randint(1, 5))
            if rng.random() < 0.15:
                board.mark_moving(rng.choice(sims))
            if who.channels and rng.random() < 0.3:
                asyncio.run(board.release(who, [rng.choice(sorted(who.channels))]))
            expected = reference_plan(board, who, request)
            try:
                got: list[tuple[str, int]] | str = [
                    (s.simulator, s.envs) for s in asyncio.run(board.open(who, request)).shards
                ]
            except NoSimulatorError as exc:
                got = exc.code.value
            assert got == expected, (request, [(s.hosted_envs, s.max_envs, s.presence) for s in sims])
        assert_consistent(board)


def test_room_taken_meanwhile_is_a_capacity_error_that_undoes_the_open():
    board, trainer, sims = sized_board(1, 1, 1, 1)
    board.YIELD_EVERY = 1
    other = peer("trainer", "u")
    asyncio.run(board.join(other))

    async def scenario() -> None:
        # The room is there when the first open starts; the second takes some while it yields.
        first = asyncio.create_task(board.open(trainer, Open(envs=3, per_simulator=1)))
        second = asyncio.create_task(board.open(other, Open(envs=2, per_simulator=1)))
        results = await asyncio.gather(first, second, return_exceptions=True)
        refused = [r for r in results if isinstance(r, NoSimulatorError)]
        assert len(refused) == 1 and refused[0].code.value == "capacity", results
        assert "room for" in refused[0].message

    asyncio.run(scenario())
    assert sum(s.hosted_envs for s in sims) in (2, 3)  # only the open that succeeded holds envs
    assert_consistent(board)


def test_simulator_churn_is_announced_coalesced_and_never_lost():
    """Joins and leaves cost O(1) each: trainers hear the latest count at most once a
    second, in turns, however fast simulators come and go, and always the last one."""

    async def scenario() -> tuple[list[list[int]], int]:
        board = Switchboard()
        board.ANNOUNCE_SECONDS = 0.2
        trainers = [peer("trainer", f"t{i}") for i in range(50)]
        for t in trainers:
            await board.join(t)
        churn = [peer("simulator", f"s{i}") for i in range(200)]
        for s in churn:  # 200 joins and 199 leaves in a burst
            await board.join(s)
            if s is not churn[-1]:
                await board.leave(s)
        await asyncio.sleep(0.5)
        seen = [[codec.unpackb(f[HEADER_SIZE:])["count"] for f in t.sent if unpack_header(f).kind == Kind.CONTROL]
                for t in trainers]  # fmt: skip
        return seen, len(board.workspaces["w"].simulators)

    seen, online = asyncio.run(scenario())
    assert online == 1
    assert all(counts and counts[-1] == 1 for counts in seen)  # the latest count always arrives
    assert all(len(counts) <= 3 for counts in seen)  # not one frame per join and leave


def test_chunks_follow_the_channel_rules_of_whole_frames_and_count_one_step():
    """A chunk (op with the MORE bit) on another trainer's channel, or from a simulator
    as a request, is refused as a whole frame would be; a chunked step counts once."""
    board = Switchboard()
    trainer, other, sim = peer("trainer", "t"), peer("trainer", "u"), peer("simulator", "s")
    joined(board, trainer, [sim])
    asyncio.run(board.join(other))
    channel = asyncio.run(board.open(trainer, Open(envs=2, per_simulator=2))).shards[0].channel
    with pytest.raises(RemoteRLError) as refused:
        board.route(other, Kind.REQUEST, Op.STEP | MORE, channel, 0)
    assert refused.value.code is ErrorCode.UNKNOWN_CHANNEL
    with pytest.raises(ProtocolError):
        board.route(sim, Kind.REQUEST, Op.STEP | MORE, channel, 0)
    with pytest.raises(ProtocolError):  # a trainer's answer
        board.route(other, Kind.RESPONSE, Op.STEP | MORE, channel, 0)
    for op in (Op.STEP | MORE, Op.STEP | MORE, Op.STEP):
        assert board.route(trainer, Kind.REQUEST, op, channel, 0) is sim
    assert trainer.env_steps == sim.env_steps == 2  # one step of 2 envs, in three chunks

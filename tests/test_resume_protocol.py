"""Resuming channels, without sockets: the answer memory, the trainer's protocol
machine, the relay's pairing of claims (docs/protocol.md, "Resuming")."""

from __future__ import annotations

import asyncio

import pytest
from test_switchboard import peer

from remoterl_ray.protocol import codec
from remoterl_ray.protocol.client_protocol import ClientProtocol
from remoterl_ray.protocol.errors import ChannelPausedError, ErrorCode, NoSimulatorError, ProtocolError
from remoterl_ray.protocol.frames import MAX_SEQ, Kind, Op, pack, unpack_header
from remoterl_ray.protocol.limits import ANSWERS_KEPT, MAX_CLAIMS_PER_PEER, MAX_RESUME_CHANNELS
from remoterl_ray.protocol.messages import (
    CAP_RESUME,
    Claim,
    Detach,
    Forget,
    Hello,
    Open,
    Paused,
    Resume,
    Resumed,
    Welcome,
    control_frame,
    parse_control,
)
from remoterl_ray.protocol.relay_protocol import ControlRequest, Refuse, RelayPeerProtocol
from remoterl_ray.protocol.replay import Answer, AnswerMemory, SeqCounter, seq_after
from remoterl_ray.relay.switchboard import Presence, Switchboard

TOKEN = "A" * 22


# -- the simulator's answer memory and the trainer's seqs ------------------------------


def test_a_seq_answered_is_answered_again_and_a_new_one_is_run():
    memory = AnswerMemory()
    assert memory.recall(5) is None
    memory.remember(5, Answer(Op.STEP, b"five", None))
    assert memory.recall(5) == Answer(Op.STEP, b"five", None)
    assert memory.recall(6) is None


def test_a_seq_older_than_the_memory_is_refused_not_run_twice():
    memory = AnswerMemory()
    for seq in range(1, ANSWERS_KEPT + 2):
        memory.remember(seq, Answer(Op.STEP, b"", None))
    with pytest.raises(ProtocolError) as raised:
        memory.recall(1)  # forgotten, and older than the newest: running it again would step twice
    assert raised.value.code is ErrorCode.RESUME_GAP
    assert memory.recall(2) is not None


def test_seqs_are_ordered_as_serial_numbers_across_the_wrap():
    assert seq_after(2, 1) and not seq_after(1, 2) and not seq_after(7, 7)
    assert seq_after(1, MAX_SEQ - 1)  # 1 comes after the last seq before the wrap
    memory = AnswerMemory()
    memory.remember(MAX_SEQ - 1, Answer(Op.STEP, b"", None))
    assert memory.recall(1) is None  # new, not a gap


def test_one_counter_numbers_every_connection_and_wraps_before_u32_overflows():
    seqs = SeqCounter()
    first = ClientProtocol(Hello(role="trainer"), seqs)
    second = ClientProtocol(Hello(role="trainer"), seqs)
    assert [first.next_seq(), second.next_seq(), first.next_seq()] == [1, 2, 3]
    seqs._count = iter([MAX_SEQ - 2, MAX_SEQ - 1])
    assert [seqs(), seqs()] == [MAX_SEQ - 1, 1]


# -- the trainer's protocol machine ----------------------------------------------------------


def greeted() -> ClientProtocol:
    protocol = ClientProtocol(Hello(role="trainer"), SeqCounter())
    protocol.receive_welcome(control_frame(Welcome(peer_id="t", workspace="w", max_frame=1 << 20)))
    return protocol


def test_a_paused_channel_fails_its_requests_refuses_new_ones_and_drops_its_late_answers():
    protocol = greeted()
    pending, _ = protocol.request(Kind.REQUEST, Op.STEP, 7, b"\x01")
    other, _ = protocol.request(Kind.REQUEST, Op.STEP, 8, b"\x02")
    assert protocol.receive(control_frame(Paused(channels=[7, 99]))) is not None
    assert isinstance(pending.reply.error, ChannelPausedError)
    assert other.reply is None and protocol.paused == {7}  # 99 is not ours: nothing remembered
    with pytest.raises(ChannelPausedError):
        protocol.request(Kind.REQUEST, Op.STEP, 7, b"")
    # The answer the simulator sent before it dropped, arriving late, is nobody's now: no warning.
    assert protocol.receive(pack(Kind.RESPONSE, Op.STEP, 7, pending.seq, codec.packb(1))) is None


def test_a_request_is_sent_again_with_its_seq_and_payload_on_the_new_channel():
    protocol = greeted()
    pending, _ = protocol.request(Kind.REQUEST, Op.STEP, 7, b"action")
    protocol.receive(control_frame(Paused(channels=[7])))
    protocol.receive(control_frame(Resumed(channels=[{"token": TOKEN, "channel": 12}])))
    assert protocol.resumed == {TOKEN: 12}
    again, [frame] = protocol.resend(pending, 12)
    assert unpack_header(frame) == (Kind.REQUEST, Op.STEP, 12, pending.seq) and frame.endswith(b"action")
    protocol.receive(pack(Kind.RESPONSE, Op.STEP, 12, pending.seq, codec.packb("done")))
    assert again.reply.value() == "done"


def test_a_channel_given_up_fails_for_good():
    protocol = greeted()
    protocol.request(Kind.REQUEST, Op.STEP, 7, b"")
    protocol.receive(control_frame(Paused(channels=[7])))
    protocol.fail_channel(7, NoSimulatorError("gone"))
    assert 7 not in protocol.paused
    with pytest.raises(NoSimulatorError):
        protocol.request(Kind.REQUEST, Op.STEP, 7, b"")


# -- what peers may send the relay -------------------------------------------------------------


def test_simulators_may_claim_and_withdraw_but_not_open():
    relay = RelayPeerProtocol(1 << 20, 100)
    relay.receive_hello(control_frame(Hello(role="simulator")))
    claim = Resume(channels=[Claim(token=TOKEN, envs=2)])
    assert type(relay.receive(control_frame(claim))) is ControlRequest
    assert type(relay.receive(control_frame(Forget(tokens=[TOKEN])))) is ControlRequest
    assert type(relay.receive(control_frame(Open(envs=1)))) is Refuse


@pytest.mark.parametrize("token", ["short", "x" * 65, "A" * 21 + "!", "A" * 21 + "\u00e9"])
def test_a_malformed_token_is_refused_before_it_reaches_the_switchboard(token):
    relay = RelayPeerProtocol(1 << 20, 100)
    relay.receive_hello(control_frame(Hello(role="trainer")))
    frame = pack(Kind.CONTROL, Op.NONE, 0, 0, codec.packb({"op": "resume", "channels": [{"token": token, "envs": 1}]}))
    refused = relay.receive(frame)
    assert type(refused) is Refuse and refused.error.code is ErrorCode.BAD_PAYLOAD


def test_a_claim_message_past_its_bound_is_refused():
    relay = RelayPeerProtocol(1 << 20, 100)
    relay.receive_hello(control_frame(Hello(role="trainer")))
    claims = [{"token": TOKEN, "envs": 1}] * (MAX_RESUME_CHANNELS + 1)
    frame = pack(Kind.CONTROL, Op.NONE, 0, 0, codec.packb({"op": "resume", "channels": claims}))
    assert type(relay.receive(frame)) is Refuse


# -- the relay pairs claims ---------------------------------------------------------------------


def resumable(role: str, name: str, workspace: str = "w", max_envs: int = 256):
    p = peer(role, name, workspace, max_envs)
    p.capabilities = frozenset({CAP_RESUME})
    return p


def controls(p) -> list:
    return [parse_control(frame[10:]) for frame in p.sent if frame[0] == Kind.CONTROL]


def opened_pair(board: Switchboard, trainer, sim) -> int:
    async def go() -> int:
        await board.join(trainer)
        await board.join(sim)
        return (await board.open(trainer, Open(envs=2))).shards

    [shard] = asyncio.run(go())
    board.route(sim, Kind.RESPONSE, Op.MAKE_VEC, shard.channel, 0)  # the simulator made the envs
    return shard


def test_tokens_are_given_only_where_both_ends_resume():
    board = Switchboard()
    shard = opened_pair(board, resumable("trainer", "t"), resumable("simulator", "s"))
    assert shard.token is not None and len(shard.token) >= 22
    plain = Switchboard()
    assert opened_pair(plain, resumable("trainer", "t"), peer("simulator", "s")).token is None


def test_an_abrupt_departure_pauses_the_channel_and_both_claims_make_a_new_one():
    board = Switchboard()
    trainer, sim = resumable("trainer", "t"), resumable("simulator", "s")
    shard = opened_pair(board, trainer, sim)
    asyncio.run(board.leave(trainer))  # no goodbye: a dropped connection
    assert controls(sim) == [Paused(channels=[shard.channel])]
    assert shard.channel not in board.channels
    assert sim.hosted_envs == 2  # its envs are suspended there: their room stays taken
    back = resumable("trainer", "t2")

    async def claims() -> None:
        await board.join(back)
        await board.resume(sim, Resume(channels=[Claim(token=shard.token, envs=2)]))
        assert not [m for m in controls(sim) if isinstance(m, Resumed)]  # waits for the trainer's claim
        await board.resume(back, Resume(channels=[Claim(token=shard.token, envs=2)]))

    asyncio.run(claims())
    [told_sim] = [m for m in controls(sim) if isinstance(m, Resumed)]
    [told_trainer] = controls(back)
    assert told_sim == told_trainer and told_sim.channels[0].token == shard.token
    channel = board.channels[told_sim.channels[0].channel]
    assert (channel.trainer, channel.simulator, channel.envs, channel.token) == (back, sim, 2, shard.token)
    assert sim.hosted_envs == 2 and sim.resumes == back.resumes == 1  # counted once, not again
    assert not board.workspaces["w"].claims and not sim.claims


def test_the_simulator_hears_the_new_channel_before_the_trainer():
    board = Switchboard()
    trainer, sim = resumable("trainer", "t"), resumable("simulator", "s")
    shard = opened_pair(board, trainer, sim)
    order = []
    for p in (trainer, sim):
        p.send_raw = lambda frame, p=p: _record(order, p.role, frame)
    claim = Resume(channels=[Claim(token=shard.token, envs=2)])

    async def go() -> None:
        await board.leave(sim)
        back = resumable("simulator", "s2")
        back.send_raw = lambda frame: _record(order, "simulator", frame)
        await board.join(back)
        await board.resume(trainer, claim)
        await board.resume(back, claim)

    asyncio.run(go())
    resumed = [role for role, frame in order if frame[0] == Kind.CONTROL and b"resumed" in frame]
    assert resumed == ["simulator", "trainer"]


async def _record(order: list, role: str, frame: bytes) -> None:
    order.append((role, frame))


def test_goodbyes_and_cut_offs_end_channels_as_before():
    board = Switchboard()
    trainer, sim = resumable("trainer", "t"), resumable("simulator", "s")
    shard = opened_pair(board, trainer, sim)
    asyncio.run(board.leave(trainer, resumable=False))
    assert controls(sim) == [Detach(channel=shard.channel)]
    board = Switchboard()
    trainer, sim = resumable("trainer", "t"), resumable("simulator", "s")
    shard = opened_pair(board, trainer, sim)
    sim.presence = Presence.CUT_OFF  # the relay closed it: a rule broken, or an operator
    asyncio.run(board.leave(sim))
    [error] = [f for f in trainer.sent if f[0] == Kind.ERROR]
    assert codec.unpackb(error[10:])["code"] == "simulator_gone"
    assert not [m for m in controls(trainer) if isinstance(m, Paused)]


def test_claims_pair_only_within_a_workspace_and_across_roles_and_envs():
    board = Switchboard()
    a_trainer, a_sim = resumable("trainer", "ta", "a"), resumable("simulator", "sa", "a")
    b_sim, a_trainer2 = resumable("simulator", "sb", "b"), resumable("trainer", "ta2", "a")
    claim = Resume(channels=[Claim(token=TOKEN, envs=2)])

    async def go() -> None:
        for p in (a_trainer, a_sim, b_sim, a_trainer2):
            await board.join(p)
        await board.resume(b_sim, claim)  # another workspace's claim of the same token
        await board.resume(a_trainer, claim)
        assert not controls(a_trainer) and not controls(b_sim)
        await board.resume(a_trainer2, claim)  # the same role: replaces, never pairs
        assert not controls(a_trainer2) and not a_trainer.claims
        with pytest.raises(ProtocolError):
            await board.resume(a_sim, Resume(channels=[Claim(token=TOKEN, envs=3)]))
        assert not controls(a_sim)
        await board.resume(a_sim, claim)

    asyncio.run(go())
    assert [type(m) for m in controls(a_trainer2)] == [Resumed]
    assert not controls(b_sim) and board.workspaces["b"].claims[(TOKEN, "simulator")].peer is b_sim


def test_claims_are_bounded_per_connection_and_end_with_it():
    board = Switchboard()
    sim = resumable("simulator", "s", max_envs=65536)
    batches = [
        [Claim(token=f"{k}{i:021d}", envs=1) for i in range(MAX_RESUME_CHANNELS)]
        for k in range(MAX_CLAIMS_PER_PEER // MAX_RESUME_CHANNELS)
    ]

    async def go() -> None:
        await board.join(sim)
        for batch in batches:
            await board.resume(sim, Resume(channels=batch))
        with pytest.raises(NoSimulatorError):
            await board.resume(sim, Resume(channels=[Claim(token=TOKEN, envs=1)]))
        board.forget(sim, Forget(tokens=[c.token for c in batches[0]]))
        assert len(sim.claims) == MAX_CLAIMS_PER_PEER - MAX_RESUME_CHANNELS
        await board.resume(sim, Resume(channels=[Claim(token=TOKEN, envs=1)]))
        await board.leave(sim)

    asyncio.run(go())
    assert not sim.claims and "w" not in board.workspaces


def test_claims_are_held_to_the_simulators_room_and_the_trainers_channel_cap():
    """Made-up tokens paired by one key holder's own trainer and simulator must not grow
    the relay past the bounds an open is held to."""
    board = Switchboard(max_channels_per_trainer=2)
    trainer, sim = resumable("trainer", "t"), resumable("simulator", "s", max_envs=4)

    async def go() -> None:
        await board.join(trainer)
        await board.join(sim)
        await board.resume(sim, Resume(channels=[Claim(token=f"{i:022d}", envs=2) for i in range(2)]))
        assert sim.hosted_envs == 4  # a simulator's waiting claims are envs it hosts: no open lands there
        with pytest.raises(NoSimulatorError):
            await board.open(trainer, Open(envs=1))
        with pytest.raises(NoSimulatorError):  # past its max_envs
            await board.resume(sim, Resume(channels=[Claim(token="x" * 22, envs=1)]))
        claims = [Claim(token=f"{i:022d}", envs=2) for i in range(2)]
        await board.resume(trainer, Resume(channels=claims))
        assert len(trainer.channels) == 2 and sim.hosted_envs == 4
        board.forget(sim, Forget(tokens=["nothing-waits-here-000"]))  # not a claim of its: nothing changes
        assert sim.hosted_envs == 4

    asyncio.run(go())
    board2 = Switchboard(max_channels_per_trainer=1)
    trainer, sim = resumable("trainer", "t"), resumable("simulator", "s")

    async def cap() -> None:
        await board2.join(trainer)
        await board2.join(sim)
        await board2.open(trainer, Open(envs=1))
        await board2.resume(trainer, Resume(channels=[Claim(token=TOKEN, envs=1)]))
        with pytest.raises(NoSimulatorError):  # the trainer already holds its one channel
            await board2.resume(sim, Resume(channels=[Claim(token=TOKEN, envs=1)]))
        assert len(trainer.channels) == 1

    asyncio.run(cap())


def test_a_request_on_a_channel_just_paused_is_told_so_not_called_unknown():
    board = Switchboard()
    trainer, sim = resumable("trainer", "t"), resumable("simulator", "s")
    shard = opened_pair(board, trainer, sim)
    asyncio.run(board.leave(sim))
    with pytest.raises(Exception) as raised:
        board.route(trainer, Kind.REQUEST, Op.STEP, shard.channel, 0)
    assert raised.value.code is ErrorCode.CHANNEL_PAUSED
    with pytest.raises(Exception) as raised:
        board.route(trainer, Kind.REQUEST, Op.STEP, shard.channel + 1000, 0)
    assert raised.value.code is ErrorCode.UNKNOWN_CHANNEL


def test_a_claim_that_cannot_pair_yet_never_removes_the_other_ends_claim():
    """A simulator asked to move claims; the trainer's claim meanwhile must not replace it
    (one waiting claim per token and role), and neither pairs with a mover."""
    board = Switchboard()
    trainer, sim = resumable("trainer", "t"), resumable("simulator", "s")
    claim = Resume(channels=[Claim(token=TOKEN, envs=1)])

    async def go() -> None:
        await board.join(trainer)
        await board.join(sim)
        board.mark_moving(sim)
        await board.resume(sim, claim)
        await board.resume(trainer, claim)
        claims = board.workspaces["w"].claims
        assert claims[(TOKEN, "simulator")].peer is sim and claims[(TOKEN, "trainer")].peer is trainer

    asyncio.run(go())
    assert not controls(trainer) and not [m for m in controls(sim) if isinstance(m, Resumed)]


def test_a_simulators_reserved_room_is_released_when_its_claim_differs():
    board = Switchboard()
    trainer, sim = resumable("trainer", "t"), resumable("simulator", "s", max_envs=4)
    shard = opened_pair(board, trainer, sim)  # 2 envs

    async def go() -> None:
        await board.leave(trainer)
        assert sim.hosted_envs == 2 and sim.reserved == {shard.token: 2}
        await board.resume(sim, Resume(channels=[Claim(token=shard.token, envs=3)]))  # not what it held

    asyncio.run(go())
    assert sim.hosted_envs == 3 and not sim.reserved  # counted as a new claim, held to its room


def test_an_error_frame_saying_paused_is_a_lost_shard_not_a_pause():
    """Only the relay pauses, in a CONTROL frame; an ERROR frame on a channel may come from
    its simulator, which must not be able to make the trainer wait out a resume window."""
    protocol = greeted()
    pending, _ = protocol.request(Kind.REQUEST, Op.STEP, 7, b"")
    forged = {"code": "channel_paused", "message": "not really", "remote_type": None}
    protocol.receive(pack(Kind.ERROR, Op.STEP, 7, pending.seq, codec.packb(forged)))
    assert not protocol.paused and not isinstance(pending.reply.error, ChannelPausedError)
    assert pending.reply.error.code is ErrorCode.SIMULATOR_GONE


def test_a_pause_forgets_a_channel_resumed_ahead():
    protocol = greeted()
    protocol.receive(control_frame(Resumed(channels=[{"token": TOKEN, "channel": 12}])))
    protocol.receive(control_frame(Paused(channels=[12])))
    assert protocol.resumed == {} and 12 in protocol.paused


def test_a_move_request_is_noted_on_the_connection_it_came_on():
    """A trainer waiting on claims follows it (any region's connection, not only the home link)."""
    from remoterl_ray.protocol.messages import Reconnect

    protocol = greeted()
    assert not protocol.move_asked
    protocol.receive(control_frame(Reconnect(reason="workspace moved")))
    assert protocol.move_asked


def test_a_channel_paused_before_its_envs_were_made_frees_its_room():
    """Nothing to suspend on the simulator: no room is kept for a claim that never comes."""
    board = Switchboard()
    trainer, sim = resumable("trainer", "t"), resumable("simulator", "s")

    async def go() -> None:
        await board.join(trainer)
        await board.join(sim)
        await board.open(trainer, Open(envs=2))
        assert sim.hosted_envs == 2
        await board.leave(trainer)  # before any make reached the simulator

    asyncio.run(go())
    assert sim.hosted_envs == 0 and not sim.reserved


def test_a_deeply_nested_claim_is_refused_before_it_is_built():
    """Crafted structure, not random bytes: a claim list nested far past the control bound."""
    relay = RelayPeerProtocol(1 << 20, 100)
    relay.receive_hello(control_frame(Hello(role="simulator")))
    nested: object = {"token": TOKEN, "envs": 1}
    for _ in range(200):
        nested = [nested]
    frame = pack(Kind.CONTROL, Op.NONE, 0, 0, codec.packb({"op": "resume", "channels": nested}))
    refused = relay.receive(frame)
    assert type(refused) is Refuse and refused.error.code is ErrorCode.BAD_PAYLOAD

"""The trainer's and simulator's connection rules (``ClientProtocol``), without sockets.

Frames go in as bytes, frames and events come out, the way the ``websockets``
library tests its own sans-I/O protocol.
"""

from __future__ import annotations

import pytest

from remoterl_ray.protocol import codec
from remoterl_ray.protocol.client_protocol import (
    ChannelLost,
    ClientProtocol,
    Control,
    Dropped,
    RelayReported,
    Request,
    State,
)
from remoterl_ray.protocol.closing import CLOSE_POLICY
from remoterl_ray.protocol.errors import (
    AuthenticationError,
    ErrorCode,
    FrameTooLargeError,
    ProtocolError,
    RelayUnavailableError,
    RemoteTimeoutError,
    SimulatorLostError,
)
from remoterl_ray.protocol.frames import HEADER_SIZE, Kind, Op, pack, unpack_header
from remoterl_ray.protocol.messages import Detach, Hello, Open, Simulators, Welcome, control_frame, error_frame

MAX_FRAME = 1024


def greeted(role: str = "trainer") -> ClientProtocol:
    protocol = ClientProtocol(Hello(role=role, api_key="k"))
    protocol.receive_welcome(control_frame(Welcome(peer_id="p", workspace="w", simulators=1, max_frame=MAX_FRAME)))
    return protocol


def test_greeting_opens_on_a_welcome():
    protocol = ClientProtocol(Hello(role="trainer", api_key="k"))
    assert protocol.state is State.GREETING
    assert unpack_header(protocol.hello_frame()).kind == Kind.CONTROL
    with pytest.raises(RuntimeError):
        protocol.request(Kind.REQUEST, Op.STEP, 1, b"")  # nothing is sent before the welcome
    welcome = protocol.receive_welcome(
        control_frame(Welcome(peer_id="p", workspace="w", simulators=2, max_frame=MAX_FRAME))
    )
    assert protocol.state is State.OPEN and welcome.workspace == "w" and protocol.max_frame == MAX_FRAME


@pytest.mark.parametrize(
    "answer, error",
    [
        (error_frame(AuthenticationError("bad key").to_wire()), AuthenticationError),
        ("a text frame", ProtocolError),
        (control_frame(Simulators(count=1)), ProtocolError),
        (b"\x01", ProtocolError),
    ],
    ids=["refused", "text", "not-a-welcome", "short"],
)
def test_a_refused_or_bad_greeting_closes_with_the_typed_error(answer, error):
    protocol = ClientProtocol(Hello(role="trainer", api_key="k"))
    with pytest.raises(error):
        protocol.receive_welcome(answer)
    assert protocol.state is State.CLOSED and isinstance(protocol.close_error, error)
    with pytest.raises(error):
        protocol.request(Kind.REQUEST, Op.STEP, 1, b"")


def test_answers_land_on_their_request_in_any_order():
    protocol = greeted()
    first, [frame1] = protocol.request(Kind.REQUEST, Op.STEP, 7, codec.packb(1))
    second, [frame2] = protocol.request(Kind.REQUEST, Op.RESET, 8, codec.packb(2))
    assert unpack_header(frame1).seq != unpack_header(frame2).seq
    assert protocol.receive(pack(Kind.RESPONSE, Op.RESET, 8, second.seq, codec.packb("b"))) is None
    assert protocol.receive(pack(Kind.RESPONSE, Op.STEP, 7, first.seq, codec.packb("a"))) is None
    assert (first.reply.value(), second.reply.value()) == ("a", "b")
    protocol.forget([first, second])
    assert protocol.pending == {}


@pytest.mark.parametrize("channel, op", [(9, Op.STEP), (7, Op.RESET)], ids=["other-channel", "other-op"])
def test_an_answer_that_does_not_match_its_request_is_dropped(channel, op):
    """A simulator that guesses another shard's seq cannot answer for it."""
    protocol = greeted()
    pending, _ = protocol.request(Kind.REQUEST, Op.STEP, 7, b"")
    event = protocol.receive(pack(Kind.RESPONSE, op, channel, pending.seq, codec.packb("forged")))
    assert isinstance(event, Dropped) and event.what == "mismatched answer"
    assert pending.reply is None


def test_a_control_request_takes_a_control_answer_only():
    protocol = greeted()
    pending, _ = protocol.request(Kind.CONTROL, Op.NONE, 0, b"")
    assert isinstance(protocol.receive(pack(Kind.RESPONSE, Op.NONE, 0, pending.seq, b"")), Dropped)
    protocol.receive(control_frame(Simulators(count=3), pending.seq))
    assert pending.reply is not None and pending.reply.kind == Kind.CONTROL


def test_a_lost_channel_fails_its_requests_now_and_later():
    protocol = greeted()
    waiting, _ = protocol.request(Kind.REQUEST, Op.STEP, 5, b"")
    other, _ = protocol.request(Kind.REQUEST, Op.STEP, 6, b"")
    event = protocol.receive(error_frame(SimulatorLostError("gone").to_wire(), channel=5))
    assert isinstance(event, ChannelLost) and event.channel == 5
    with pytest.raises(SimulatorLostError):
        waiting.reply.value()
    assert other.reply is None
    with pytest.raises(SimulatorLostError):
        protocol.request(Kind.REQUEST, Op.STEP, 5, b"")


def test_a_late_error_answer_is_ignored_not_taken_for_a_lost_channel():
    protocol = greeted()
    pending, _ = protocol.request(Kind.REQUEST, Op.STEP, 5, b"")
    assert isinstance(protocol.timed_out(pending, 1.0).error, RemoteTimeoutError)
    protocol.forget([pending])
    assert protocol.receive(error_frame({"code": "env_error", "message": "late"}, op=Op.STEP, channel=5,
                                        seq=pending.seq)) is None  # fmt: skip
    assert 5 not in protocol.lost_channels


def test_unsolicited_control_and_relay_errors_are_events():
    protocol = greeted()
    event = protocol.receive(control_frame(Simulators(count=4)))
    assert isinstance(event, Control) and event.message.count == 4
    reported = protocol.receive(error_frame(ProtocolError("no").to_wire()))
    assert isinstance(reported, RelayReported) and reported.channel == 0
    bad = protocol.receive(pack(Kind.CONTROL, Op.NONE, 0, 0, b"\xc1"))
    assert isinstance(bad, Dropped) and bad.what == "malformed control"
    assert isinstance(protocol.receive(b"\x02\x04"), Dropped)


def test_a_simulator_gets_requests_and_answers_within_the_frame_limit():
    protocol = greeted("simulator")
    request = protocol.receive(pack(Kind.REQUEST, Op.STEP, 3, 11, codec.packb([1])))
    assert isinstance(request, Request) and (request.op, request.channel, request.seq) == (Op.STEP, 3, 11)
    [answer] = protocol.answer(Op.STEP, 3, 11, codec.packb("ok"), None)
    assert unpack_header(answer) == (Kind.RESPONSE, Op.STEP, 3, 11)
    [too_big] = protocol.answer(Op.STEP, 3, 11, b"x" * (MAX_FRAME + 1), None)
    header = unpack_header(too_big)
    assert (header.kind, header.seq) == (Kind.ERROR, 11)
    assert codec.unpackb(too_big[HEADER_SIZE:])["code"] == ErrorCode.FRAME_TOO_LARGE.value
    detach = protocol.receive(control_frame(Detach(channel=3)))
    assert isinstance(detach, Control) and detach.message.channel == 3
    # An error on a channel is the relay refusing one of our answers, not a lost channel.
    assert isinstance(protocol.receive(error_frame(ProtocolError("x").to_wire(), channel=3, seq=11)), RelayReported)


def test_a_request_over_the_frame_limit_is_refused_before_sending():
    protocol = greeted()
    with pytest.raises(FrameTooLargeError):
        protocol.request(Kind.REQUEST, Op.STEP, 1, b"x" * (MAX_FRAME + 1))
    assert protocol.pending == {}


@pytest.mark.parametrize(
    "code, reason, error",
    [
        (CLOSE_POLICY, "auth_failed: key revoked", AuthenticationError),
        (CLOSE_POLICY, "not-a-code: whatever", RelayUnavailableError),
        (1006, "", RelayUnavailableError),
        (None, "", RelayUnavailableError),
    ],
)
def test_losing_the_connection_fails_everything_with_the_relays_reason(code, reason, error):
    protocol = greeted()
    pending, _ = protocol.request(Kind.REQUEST, Op.STEP, 1, b"")
    assert isinstance(protocol.connection_lost(code, reason), error)
    assert protocol.state is State.CLOSED
    with pytest.raises(error):
        pending.reply.value()
    with pytest.raises(error):
        protocol.request(Kind.CONTROL, Op.NONE, 0, control_frame(Open(envs=1))[HEADER_SIZE:])
    assert isinstance(protocol.connection_lost(1000, ""), error), "the first reason stays"


def test_sequence_ids_wrap_before_u32_overflow():
    protocol = greeted()
    protocol._seq = iter([2**32 - 1])  # the last u32
    seqs = [protocol.next_seq() for _ in range(2)]
    assert seqs == [1, 2]


def test_a_simulator_cannot_pass_for_the_relay_on_its_channel():
    """An answer coded relay_gone would have the trainer make every shard again."""
    protocol = greeted()
    pending, _ = protocol.request(Kind.REQUEST, Op.STEP, 5, b"")
    protocol.receive(error_frame(RelayUnavailableError("fake").to_wire(), op=Op.STEP, channel=5, seq=pending.seq))
    assert type(pending.reply.error) is SimulatorLostError
    other, _ = protocol.request(Kind.REQUEST, Op.STEP, 6, b"")
    lost = protocol.receive(error_frame(RelayUnavailableError("fake").to_wire(), channel=6))
    assert isinstance(lost, ChannelLost) and type(lost.error) is SimulatorLostError


def test_only_channels_in_use_are_remembered_and_given_back_ones_are_forgotten():
    protocol = greeted()
    for channel in range(100, 1100):  # a hostile relay naming channels we never used
        assert protocol.receive(error_frame(SimulatorLostError("x").to_wire(), channel=channel)) is None
    assert protocol.lost_channels == {}
    out, _ = protocol.request(Kind.REQUEST, Op.STEP, 7, b"")
    protocol.receive(error_frame(SimulatorLostError("x").to_wire(), channel=7))
    protocol.forget_channels([7])
    assert protocol.pending == {} and protocol.lost_channels == {} and protocol.channels == set()


def test_nothing_read_after_the_close_changes_an_answer():
    protocol = greeted()
    pending, _ = protocol.request(Kind.REQUEST, Op.STEP, 1, b"")
    protocol.close()
    assert protocol.receive(pack(Kind.RESPONSE, Op.STEP, 1, pending.seq, codec.packb("late"))) is None
    with pytest.raises(RelayUnavailableError):
        pending.reply.value()


def test_forgetting_a_request_never_drops_a_newer_one_with_the_same_seq():
    protocol = greeted()
    old, _ = protocol.request(Kind.REQUEST, Op.STEP, 1, b"")
    protocol.forget([old])
    protocol._seq = iter([old.seq])  # the seq comes round again
    new, _ = protocol.request(Kind.REQUEST, Op.STEP, 1, b"")
    protocol.forget([old])
    assert protocol.pending == {new.seq: new}

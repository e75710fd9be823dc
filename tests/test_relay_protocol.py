"""The relay's per-peer connection rules (``RelayPeerProtocol``), without sockets."""

from __future__ import annotations

import pytest

from remoterl_ray.protocol import codec
from remoterl_ray.protocol.errors import ErrorCode, FrameTooLargeError, ProtocolError, ProtocolVersionError
from remoterl_ray.protocol.frames import HEADER_SIZE, Kind, Op, pack, unpack_header
from remoterl_ray.protocol.limits import MAX_HELLO_BYTES
from remoterl_ray.protocol.messages import Hello, Open, Release, Simulators, control_frame, encode_control
from remoterl_ray.protocol.relay_protocol import (
    ControlRequest,
    ErrorBudget,
    Forward,
    RelayPeerProtocol,
    Refuse,
    State,
)

MAX_FRAME = 1024


def opened(role: str = "trainer", errors: int = 100) -> RelayPeerProtocol:
    protocol = RelayPeerProtocol(MAX_FRAME, errors)
    protocol.receive_hello(control_frame(Hello(role=role, api_key="k")))
    return protocol


def refused_code(event) -> str:
    assert isinstance(event, Refuse), event
    return codec.unpackb(event.frame[HEADER_SIZE:])["code"]


def test_a_good_hello_opens_the_connection():
    protocol = RelayPeerProtocol(MAX_FRAME, 10)
    assert protocol.state is State.AWAITING_HELLO
    hello = protocol.receive_hello(control_frame(Hello(role="simulator", api_key="k", max_envs=8)))
    assert (hello.role, hello.max_envs, protocol.state, protocol.role) == ("simulator", 8, State.OPEN, "simulator")
    with pytest.raises(RuntimeError):
        protocol.receive_hello(control_frame(Hello(role="simulator", api_key="k")))


@pytest.mark.parametrize(
    "data",
    [
        None,  # a text message
        pack(Kind.REQUEST, Op.STEP, 1, 1, b""),  # not a CONTROL frame
        b"\x01\x00",  # shorter than a header
        pack(Kind.CONTROL, Op.NONE, 0, 0, b"\xc1"),  # not msgpack
        pack(Kind.CONTROL, Op.NONE, 0, 0, codec.packb({"op": "hello", "role": "admin"})),
        pack(Kind.CONTROL, Op.NONE, 0, 0, b"\x00" * (MAX_HELLO_BYTES + 1)),  # bounded before decoding
    ],
    ids=["text", "not-control", "short", "not-msgpack", "bad-role", "oversized"],
)
def test_a_bad_hello_is_a_bad_hello_error_and_closes(data):
    protocol = RelayPeerProtocol(MAX_FRAME, 10)
    with pytest.raises(ProtocolError) as raised:
        protocol.receive_hello(data)
    assert raised.value.code == ErrorCode.BAD_HELLO and protocol.state is State.CLOSED


def test_another_protocol_version_keeps_its_own_code():
    protocol = RelayPeerProtocol(MAX_FRAME, 10)
    hello = pack(Kind.CONTROL, Op.NONE, 0, 0, encode_control(Hello(role="trainer", api_key="k", protocol=99)))
    with pytest.raises(ProtocolVersionError) as raised:
        protocol.receive_hello(hello)
    assert raised.value.code == ErrorCode.PROTOCOL_VERSION and "99" in raised.value.message


@pytest.mark.parametrize("kind", [Kind.REQUEST, Kind.RESPONSE, Kind.ERROR])
def test_frames_with_a_known_op_are_forwarded_untouched(kind):
    frame = pack(kind, Op.STEP, 7, 42, b"\xc1 never decoded")
    event = opened().receive(frame)
    assert event == Forward(frame, kind, Op.STEP, 7, 42)


@pytest.mark.parametrize(
    "frame",
    [
        pack(Kind.REQUEST, Op.STEP, 7, 42, b"x"),
        pack(Kind.RESPONSE, Op.RESET, 7, 42, b""),
        pack(Kind.REQUEST, 200, 7, 42, b""),  # unknown op
        pack(Kind.REQUEST, Op.STEP, 7, 42, b"\0" * (MAX_FRAME + 1)),  # too large
        pack(Kind.CONTROL, Op.NONE, 0, 1, encode_control(Release(channels=[1]))),
        pack(9, Op.STEP, 7, 42, b""),  # unknown kind
        b"\x01\x00",  # shorter than a header
    ],
    ids=["request", "response", "unknown-op", "too-large", "control", "unknown-kind", "short"],
)
def test_the_fast_path_takes_exactly_the_forwards_and_changes_nothing(frame):
    """``forward_of`` (asked as frames arrive, outside the pump) is ``receive`` for a
    forward and None otherwise, and never spends from the budget of refusals."""
    protocol = opened(errors=1)
    fast = protocol.forward_of(frame)
    assert protocol.state is State.OPEN and protocol.errors.spend()  # nothing spent: one refusal still left
    protocol = opened(errors=100)
    event = protocol.receive(frame)
    assert fast == (event if isinstance(event, Forward) else None)
    cut_off = opened(errors=100)
    cut_off.state = State.CLOSED
    assert cut_off.forward_of(frame) is None


def test_refusals_echo_what_the_sender_can_match_on():
    protocol = opened()
    unknown_op = protocol.receive(pack(Kind.REQUEST, 200, 7, 42, b""))
    assert refused_code(unknown_op) == ErrorCode.UNKNOWN_OP.value
    assert unpack_header(unknown_op.frame) == (Kind.ERROR, 0, 7, 42)  # never an invalid op
    big = protocol.receive(pack(Kind.REQUEST, Op.STEP, 7, 43, b"x" * (MAX_FRAME + 1)))
    assert isinstance(big.error, FrameTooLargeError) and unpack_header(big.frame) == (Kind.ERROR, Op.STEP, 7, 43)
    for data in (None, b"\x02"):
        assert unpack_header(protocol.receive(data).frame) == (Kind.ERROR, 0, 0, 0)
    assert refused_code(protocol.receive(pack(9, Op.STEP, 7, 44, b""))) == ErrorCode.BAD_FRAME.value


def test_only_a_trainer_may_open_release_and_locate():
    trainer, simulator = opened("trainer"), opened("simulator")
    asked = trainer.receive(control_frame(Open(envs=4), seq=5))
    assert isinstance(asked, ControlRequest) and asked.message == Open(envs=4) and asked.seq == 5
    assert isinstance(trainer.receive(control_frame(Release(channels=[1, 2]))), ControlRequest)
    assert refused_code(simulator.receive(control_frame(Open(envs=4), seq=5))) == ErrorCode.BAD_PAYLOAD.value
    assert refused_code(trainer.receive(control_frame(Simulators(count=1)))) == ErrorCode.BAD_PAYLOAD.value
    assert isinstance(trainer.receive(pack(Kind.CONTROL, Op.NONE, 0, 6, b"\xc1")), Refuse)


def test_a_peer_that_spends_its_budget_of_refusals_is_cut_off():
    protocol = opened(errors=3)
    cut = [protocol.receive(None).cut_off for _ in range(4)]
    assert cut == [False, False, False, True] and protocol.state is State.CLOSED


def test_the_budget_refills_so_rare_mistakes_never_add_up():
    budget = ErrorBudget(2, refill_seconds=60.0)
    start = budget.at
    assert budget.spend(start) and budget.spend(start) and not budget.spend(start)
    assert budget.spend(start + 60.0)  # a minute later the budget is whole again


def test_nothing_is_taken_before_the_hello_or_after_the_cut_off():
    fresh = RelayPeerProtocol(MAX_FRAME, 10)
    early = fresh.receive(pack(Kind.REQUEST, Op.STEP, 1, 1, b""))
    assert isinstance(early, Refuse) and early.cut_off
    cut = opened(errors=0)
    assert cut.receive(None).cut_off and cut.state is State.CLOSED
    assert isinstance(cut.receive(pack(Kind.REQUEST, Op.STEP, 1, 1, b"")), Refuse)

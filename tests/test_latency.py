"""Round trips from headers: the window's quantiles, the histogram, and what the
switchboard times (only an answer with the asked seq, at its last chunk)."""

from __future__ import annotations

import asyncio
import random

import pytest

from remoterl_ray.protocol.errors import ErrorCode
from remoterl_ray.protocol.frames import MORE, Kind, Op
from remoterl_ray.protocol.messages import Open
from remoterl_ray.relay import latency
from remoterl_ray.relay.latency import PROMETHEUS_BOUNDS, SLICE_SECONDS, SLICES, LatencyHistogram, LatencyWindow
from remoterl_ray.relay.switchboard import Switchboard
from test_switchboard import joined, peer


@pytest.mark.parametrize("spread", [0.0, 0.3])
def test_window_quantiles_are_within_the_bucket_width(spread):
    rng = random.Random(7)
    values = sorted(0.05 * (1 + spread * rng.random()) for _ in range(2000))
    window = LatencyWindow()
    for v in values:
        window.add(v, 100.0)
    p50, p99, n = window.quantiles(100.0)
    assert n == len(values)
    width = 2 ** (1 / latency.BUCKETS_PER_OCTAVE)  # a bucket's ratio of top to bottom
    assert values[999] / width <= p50 <= values[999] * width
    assert values[1979] / width <= p99 <= values[1979] * width


def test_window_forgets_samples_older_than_its_slices():
    window = LatencyWindow()
    window.add(0.001, 0.0)
    window.add(0.5, SLICE_SECONDS * (SLICES - 1))
    assert window.quantiles(SLICE_SECONDS * (SLICES - 1))[2] == 2
    p50, _, n = window.quantiles(SLICE_SECONDS * SLICES)  # the first slice has left the window
    assert n == 1 and p50 == pytest.approx(0.5, rel=0.05)
    assert window.quantiles(SLICE_SECONDS * SLICES * 3) is None
    for t in range(100):  # however long it runs, a window keeps SLICES slices at most
        window.add(0.01, t * SLICE_SECONDS)
    assert len(window._slices) == SLICES


def test_extremes_land_in_the_end_buckets():
    window = LatencyWindow()
    for v in (0.0, -1.0, 1e-9, 1e9):
        window.add(v, 0.0)
    p50, p99, n = window.quantiles(0.0)
    assert n == 4 and p50 <= 2e-5 and p99 > 100


def test_histogram_is_cumulative_with_inf_last():
    h = LatencyHistogram()
    for v in (0.0004, 0.05, 0.0501, 3.0, 99.0):
        h.add(v)
    pairs = dict(h.cumulative())
    assert list(pairs)[-1] == "+Inf" and pairs["+Inf"] == 5
    assert pairs["0.0005"] == 1 and pairs["0.05"] == 2 and pairs["0.075"] == 3 and pairs["5.0"] == 4
    assert h.sum == pytest.approx(0.0004 + 0.05 + 0.0501 + 3.0 + 99.0)
    assert len(pairs) == len(PROMETHEUS_BOUNDS) + 1


def board_with_channel(envs: int = 1):
    board = Switchboard()
    trainer, sim = peer("trainer", "t"), peer("simulator", "s")
    joined(board, trainer, [sim])
    channel = asyncio.run(board.open(trainer, Open(envs=envs, per_simulator=envs))).shards[0].channel
    return board, trainer, sim, channel


def steps_timed(board: Switchboard, workspace: str = "w") -> int:
    h = board.latency.get((workspace, int(Op.STEP)))
    return 0 if h is None else h.cumulative()[-1][1]


def test_only_the_answer_with_the_asked_seq_stops_the_clock():
    board, trainer, sim, channel = board_with_channel()
    board.route(trainer, Kind.REQUEST, Op.STEP, channel, 7)
    board.route(sim, Kind.RESPONSE, Op.STEP, channel, 6)  # forged or late: not this request's
    assert steps_timed(board) == 0
    board.route(sim, Kind.RESPONSE, Op.STEP | MORE, channel, 7)  # a first chunk: not done yet
    assert steps_timed(board) == 0
    board.route(sim, Kind.RESPONSE, Op.STEP, channel, 7)
    assert steps_timed(board) == 1 and sim.latency.quantiles() is not None
    board.route(sim, Kind.RESPONSE, Op.STEP, channel, 7)  # a repeat answer counts nothing
    assert steps_timed(board) == 1
    board.route(trainer, Kind.REQUEST, Op.RESET, channel, 8)
    board.route(sim, Kind.ERROR, Op.RESET, channel, 8)  # an error answers too, under its op
    assert board.latency[("w", int(Op.RESET))].cumulative()[-1][1] == 1
    assert sim.latency.quantiles()[2] == 1  # the simulator's window holds steps only


def test_another_simulator_cannot_stop_or_skew_a_channels_clock():
    """A simulator answering another's channel with the asked seq is dropped, untimed;
    the real answer still stops the clock."""
    board, trainer, sim, channel = board_with_channel()
    intruder = peer("simulator", "x")
    asyncio.run(board.join(intruder))
    board.route(trainer, Kind.REQUEST, Op.STEP, channel, 5)
    assert board.route(intruder, Kind.RESPONSE, Op.STEP, channel, 5) is None
    assert steps_timed(board) == 0 and intruder.latency.quantiles() is None
    assert board.route(sim, Kind.RESPONSE, Op.STEP, channel, 5) is trainer
    assert steps_timed(board) == 1


def test_a_chunked_request_is_timed_from_its_last_chunk_and_a_newer_request_replaces_it():
    board, trainer, sim, channel = board_with_channel()
    board.route(trainer, Kind.REQUEST, Op.STEP | MORE, channel, 1)
    assert board.channels[channel].asked is None  # the clock starts at the last chunk
    board.route(trainer, Kind.REQUEST, Op.STEP, channel, 1)
    board.route(trainer, Kind.REQUEST, Op.STEP, channel, 2)  # the first was never answered
    board.route(sim, Kind.RESPONSE, Op.STEP, channel, 1)
    assert steps_timed(board) == 0
    board.route(sim, Kind.RESPONSE, Op.STEP, channel, 2)
    assert steps_timed(board) == 1


def test_refusals_are_counted_by_workspace_and_code():
    board = Switchboard()
    board.refused("w", ErrorCode.UNKNOWN_CHANNEL)
    board.refused("w", ErrorCode.UNKNOWN_CHANNEL)
    board.refused("", ErrorCode.AUTH_FAILED)
    assert board.refusals == {("w", "unknown_channel"): 2, ("", "auth_failed"): 1}


def test_a_key_farm_cannot_grow_the_metrics_past_their_workspace_cap():
    """Open mode makes a workspace per key: past the cap, they share one label."""
    from remoterl_ray.accounts.store import UsageDelta
    from remoterl_ray.relay.metrics import RelayTotals
    from remoterl_ray.relay.switchboard import MAX_METRIC_WORKSPACES, OTHER_WORKSPACES

    board, totals = Switchboard(), RelayTotals()
    farm = [f"key-{i}" for i in range(MAX_METRIC_WORKSPACES + 300)]
    for workspace in farm:
        board.refused(workspace, ErrorCode.UNKNOWN_CHANNEL)
    totals.observe([UsageDelta("k", w, "trainer", bytes_in=10, steps=1) for w in farm], board)
    labels = {w for w, _ in board.refusals}
    assert len(labels) == MAX_METRIC_WORKSPACES + 1 and OTHER_WORKSPACES in labels
    assert board.refusals[(OTHER_WORKSPACES, "unknown_channel")] == 300  # counted, not lost
    steps = {values[0]: n for values, n in totals.counts["env_steps"].items()}
    assert set(steps) == labels and steps[OTHER_WORKSPACES] == 300
    assert board.metric_workspace(farm[0]) == farm[0]  # the first ones keep their own series


def test_per_channel_figures_are_only_for_v1_stats():
    """The view published every second carries no per-channel windows (thousands per trainer)."""
    board, trainer, sim, channel = board_with_channel()
    board.route(trainer, Kind.REQUEST, Op.STEP, channel, 1)
    board.route(sim, Kind.RESPONSE, Op.STEP, channel, 1)
    [published] = board.stats()["workspaces"]["w"]["simulators"]
    assert "channel_latency" not in published and published["latency"]["n"] == 1
    [full] = board.stats(per_channel=True)["workspaces"]["w"]["simulators"]
    assert full["channel_latency"][str(channel)]["n"] == 1

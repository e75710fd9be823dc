"""The channels behind one remote env, and requests over them.

Both ``RemoteEnv`` (one shard) and ``RemoteVectorEnv`` (one shard per
simulator) keep the connection each shard was created on (shards in other
regions live on other connections). If a connection drops (a relay
restart, a Serve replica removed by a downscale or redeploy, a network
blip), or the relay says a simulator's did (``Paused``), the shards resume:
each claims its channel again by token, on a fresh connection if need be,
and the requests still unanswered are sent again with their seqs, so a call
returns exactly what it would have without the drop (``docs/protocol.md``).
Only if that fails within ``resume_window`` (the simulator process is gone)
are the channels given up: a paused shard's call raises
``SimulatorLostError`` (``resume_expired``); after a lost connection the
envs are made again on a fresh one and the shards are ``Serving.MADE_AGAIN``
until a reset is answered. An episode
call (reset, step, render) interrupted that way returns None, and the env
class reports the episode truncated; any other call raises
``EnvsMadeAgainError``. If the envs cannot be made again, the call raises
the connection's ``RelayUnavailableError``.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from enum import Enum
from typing import Any

from gymnasium.envs.registration import EnvSpec

from ..protocol import codec
from ..protocol.errors import (
    ChannelPausedError,
    EnvClosedError,
    EnvsMadeAgainError,
    ErrorCode,
    RelayUnavailableError,
    RemoteRLError,
    SimulatorLostError,
)
from ..protocol.frames import Kind, Op
from ..protocol.messages import CAP_RESUME, Claim, Shard
from ..protocol.client_protocol import Pending, Reply
from ..transport import RelayConnection
from .session import Made, TrainerSession, group_by_conn, group_channels
from .specs import remote_spec

log = logging.getLogger("remoterl.trainer")


class Serving(Enum):
    """Where a remote env's shards stand."""

    LIVE = "live"
    MADE_AGAIN = "made again"  # the relay connection was lost and the envs made again: episodes ended, reset next
    CLOSED = "closed"


EPISODE_OPS = frozenset({Op.RESET, Op.STEP, Op.RENDER})  # calls the env classes carry across envs made again


SKIP = object()  # in ``Shards.request`` args: nothing is sent to that shard, and SKIP is its answer
PENDING = object()  # a shard's answer not received yet
POLL_SLICE = 0.002  # seconds spent reading one connection before the next, for shards in several regions


def cut_off(error: RemoteRLError | None) -> bool:
    """An answer that says the channel's connection, or its other end's, dropped: a
    resume may still bring the real answer (an error the relay closed us with may not)."""
    return isinstance(error, ChannelPausedError) or (
        isinstance(error, RelayUnavailableError) and error.code is ErrorCode.RELAY_GONE
    )


class InFlight:
    """Requests of one op to some shards; their answers arrive in any order.

    Each shard is idle (``SKIP``: not asked, or its answer taken), out (``PENDING``,
    its request in ``out``) or answered (its ``Reply``, until :meth:`take`)."""

    def __init__(self, op: int, shards: int, started: float) -> None:
        self.op = op
        self.answers: list[Any] = [SKIP] * shards
        self.out: dict[int, tuple[RelayConnection, Pending]] = {}  # shard -> its request waiting for an answer
        self.started = started
        self.dropped = False  # its envs were made again: nothing of it will ever be answered

    @property
    def asked(self) -> list[int]:
        """Shards out or answered, not yet taken."""
        return [i for i, answer in enumerate(self.answers) if answer is not SKIP]

    @property
    def answered(self) -> list[int]:
        return [i for i, answer in enumerate(self.answers) if answer is not SKIP and answer is not PENDING]

    @property
    def done(self) -> bool:
        return not self.out

    def take(self, shards: list[int]) -> list[Any]:
        """Hand over these shards' replies; they are idle again (may be sent again)."""
        replies = [self.answers[i] for i in shards]
        for i in shards:
            assert i not in self.out, "only answered shards are taken"
            self.answers[i] = SKIP
        return replies

    def waiting(self) -> list[tuple[RelayConnection, list[int], list[Pending]]]:
        """The requests still out, per connection: (connection, shards, requests)."""
        by_conn: dict[int, tuple[RelayConnection, list[int], list[Pending]]] = {}
        for i, (conn, pending) in self.out.items():
            _, shards, pendings = by_conn.setdefault(id(conn), (conn, [], []))
            shards.append(i)
            pendings.append(pending)
        return list(by_conn.values())

    def values(self) -> list[Any]:
        """Each shard's answer (its error raised), in shard order; SKIP where not asked."""
        return [answer if answer is SKIP else answer.value() for answer in self.answers]


def every_env_reset(flight: InFlight) -> bool:
    """A reset flight that asked every shard and got an answer from each (not an error)."""
    return all(answer is not SKIP and answer is not PENDING and answer.error is None for answer in flight.answers)


class Shards:
    def __init__(
        self,
        session: TrainerSession,
        env_id: str,
        num_envs: int,
        make_arg: dict[str, Any],
        *,
        vector: bool,
        whole: bool = False,
    ):
        """``whole``: all envs on one simulator (a vector env that vectorises inside
        one object cannot be cut into shards)."""
        self.session = session
        self.env_id = env_id
        self.num_envs = num_envs
        self.vector = vector
        self.whole = whole
        self.generation = 0  # how many times the envs were made again on a new connection
        self._make = make_arg
        made = session.create(env_id, num_envs, make_arg, vector=vector, whole=whole)
        if len(made) > 1 and any(m.description.vectorization_mode == "vector_entry_point" for m in made):
            # The simulators chose the env's vector entry point (the id is unknown here): make it whole.
            for conn, channels in group_channels(made):
                session.release(conn, channels, close_first=True)
            self.whole = True
            made = session.create(env_id, num_envs, make_arg, vector=vector, whole=True)
        self._flights: weakref.WeakSet[InFlight] = weakref.WeakSet()  # flights with requests out
        self._adopt(made)
        self.description = made[0].description
        self.observation_space = self.description.observation_space
        self.action_space = self.description.action_space
        for other in (m.description for m in made[1:]):
            if (other.observation_space, other.action_space) != (self.observation_space, self.action_space):
                log.warning("simulators of %s report different spaces; using the first one's", env_id)
        self.state = Serving.LIVE
        session.remote_envs.add(self)

    @property
    def closed(self) -> bool:
        return self.state is Serving.CLOSED

    def _adopt(self, made: list[Made]) -> None:
        self.made = made
        self.shards: list[Shard] = [m.shard for m in made]
        self.channels = [s.channel for s in self.shards]
        self.conns = [m.conn for m in made]
        self.sizes = [s.envs for s in self.shards]
        self.bounds = []
        start = 0
        for size in self.sizes:
            self.bounds.append((start, start + size))
            start += size

    def _rebuild(self, lost: RelayUnavailableError, op: int) -> None:
        """Make the envs again on a fresh connection (the shards are then ``MADE_AGAIN``);
        raises ``lost`` if that fails, or if ``op`` is not an episode call."""
        if self.state is Serving.CLOSED:  # closed while a step was out: nothing is made again
            raise EnvClosedError(f"remote env {self.env_id!r} is closed") from lost
        log.warning("lost the relay connection of %s (%s); making its envs again", self.env_id, lost)
        for flight in list(self._flights):  # requests out to the lost envs: none is sent to the new ones
            flight.dropped = True
            self.abandon(flight)
        for conn, channels in group_channels(self.made):
            self.session.release(conn, channels)  # channels on a live connection (another region) go back
        try:
            self.session.links.wait_for_simulators(1, self.session.settings.simulator_wait)
            self._adopt(
                self.session.create(self.env_id, self.num_envs, self._make, vector=self.vector, whole=self.whole)
            )
        except RemoteRLError as exc:
            raise lost from exc
        log.warning("%s is served again (%s); its episodes were truncated", self.env_id, self.sizes)
        self.state = Serving.MADE_AGAIN
        self.generation += 1
        if op not in EPISODE_OPS:
            raise EnvsMadeAgainError(f"{lost}; the envs were made again on a new connection") from lost

    def spec(self) -> EnvSpec | None:
        """The env's spec, as a local ``make`` or ``make_vec`` would report it."""
        vector = None
        if self.vector:
            vector = {
                "num_envs": self.num_envs,
                "vectorization_mode": self.description.vectorization_mode,
                "vector_kwargs": self._make.get("vector_kwargs"),
            }
        return remote_spec(self.description.spec, self.env_id, self._make.get("kwargs") or {}, vector=vector)

    def request(self, op: int, args: list[Any], timeout: float | None = None) -> list[Any] | None:
        """One request per shard (``args[i]`` for shard i, none where it is ``SKIP``),
        sent together; answers in shard order (``SKIP`` for shards not asked).
        None: the envs were made again meanwhile (an episode call; see the module)."""
        flight = self.send(op, args)
        if flight is None or self.wait(flight, timeout) is None:
            return None
        return flight.values()

    def request_anew(self, op: int, first: list[Any], args: Callable[[], list[Any]]) -> list[Any]:
        """:meth:`request` with ``first``; if the envs were made again meanwhile, once
        more on the new ones with ``args()`` for their shards (a reset: seeds split anew)."""
        answers = self.request(op, first)
        if answers is None:
            answers = self.request(op, args())
        if answers is None:
            raise self._lost_twice()
        return answers

    def request_reset(self, op: int, args: Callable[[], list[Any]], reset: Callable[[], Any]) -> list[Any]:
        """:meth:`request` of envs that must have been reset (a render): envs made again,
        before or during the call, are reset first with ``reset()``, then asked once more."""
        for _ in range(2):
            if self.state is Serving.MADE_AGAIN:
                reset()
            answers = self.request(op, args())
            if answers is not None:
                return answers
        raise self._lost_twice()

    def _lost_twice(self) -> RelayUnavailableError:
        return RelayUnavailableError(f"the relay connection of {self.env_id!r} was lost twice in one call")

    def send(self, op: int, args: list[Any], into: InFlight | None = None) -> InFlight | None:
        """Put one request per asked shard in flight (``SKIP``: that shard is not asked);
        :meth:`wait` gathers the answers. ``into``: add them to a flight of the same op
        (these shards must be idle in it). Shards whose channel is cut are resumed and
        asked then. If sending fails, the shards of this call are idle again and the
        flight's other requests are untouched; None: the envs were made again (an
        episode call)."""
        if self.closed:
            raise EnvClosedError(f"remote env {self.env_id!r} is closed")
        if self.session.released_later:
            self.session.release_deferred()
        flight = into if into is not None else InFlight(op, len(args), time.perf_counter())
        new = [i for i, arg in enumerate(args) if arg is not SKIP]
        assert flight.op == op and all(flight.answers[i] is SKIP for i in new), "shards already in flight"
        if into is not None and not flight.out:
            flight.started = time.perf_counter()  # latency is counted from the first request out
        unsent = new
        resume_by = time.monotonic() + self.session.settings.resume_window  # one window per call
        try:
            for _ in range(2):
                unsent, cause = self._start(flight, op, args, unsent)
                if not unsent or not self._resume(cause, resume_by):
                    break
            if unsent:
                raise cause if cause is not None else self._lost_twice()
        except BaseException as exc:
            for i in new:  # this call's requests are withdrawn; the others stay out
                if i in flight.out:
                    conn, pending = flight.out.pop(i)
                    conn.forget([pending])
                flight.answers[i] = SKIP
            if isinstance(exc, ChannelPausedError):
                raise self._expired(exc) from exc
            if not isinstance(exc, RelayUnavailableError):
                raise
            self._rebuild(exc, op)
            return None
        if flight.out:
            self._flights.add(flight)  # a resume sends its requests again, whichever call resumes
        return flight

    def _start(
        self, flight: InFlight, op: int, args: list[Any], shards: list[int]
    ) -> tuple[list[int], RemoteRLError | None]:
        """Send ``shards``' requests, a connection at a time; the shards not sent because
        their channel is cut (a lost connection, a paused channel), and why."""
        unsent: list[int] = []
        cause: RemoteRLError | None = None
        for conn, idx in group_by_conn(self.conns, shards):
            requests = [(Kind.REQUEST, op, self.channels[i], codec.packb(args[i])) for i in idx]
            try:
                pendings = conn.start(requests)
            except RemoteRLError as exc:
                if not cut_off(exc):
                    raise
                unsent += idx
                cause = exc
                continue
            for i, pending in zip(idx, pendings):
                flight.out[i] = (conn, pending)
                flight.answers[i] = PENDING
        return unsent, cause

    def wait(self, flight: InFlight, timeout: float | None = None, envs: int | None = None) -> list[int] | None:
        """Wait until the answered shards hold at least ``envs`` envs (default: until
        every shard out has answered), or ``timeout`` passes; then every shard still
        out answers a ``RemoteTimeoutError``. Shards cut meanwhile are resumed and
        asked again (the time that takes is not counted). Returns the answered shards,
        in shard order (their replies are in ``flight.answers`` until taken); None: the
        envs were made again (an episode call), the flight abandoned."""
        if flight.dropped:  # made again under it by another call
            return None
        timeout = timeout if timeout is not None else self.session.settings.timeout
        deadline = time.monotonic() + timeout
        answered_envs = sum(self.sizes[i] for i in flight.answered)
        wanted = answered_envs + sum(self.sizes[i] for i in flight.out)
        everything = envs is None or envs >= wanted
        wanted = wanted if everything else envs
        resume_by: float | None = None  # one window per call, however often its channels are cut
        try:
            while flight.out and answered_envs < wanted:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                calls = flight.waiting()
                several = len(calls) > 1
                cut: list[tuple[int, RemoteRLError]] = []
                for conn, idx, pendings in calls:
                    until = min(deadline, time.monotonic() + POLL_SLICE) if several else deadline
                    conn.gather(pendings, until, len(pendings) if everything and not several else 1)
                    answered = [(i, p) for i, p in zip(idx, pendings) if p.reply is not None]
                    for i, pending in answered:
                        assert pending.reply is not None
                        if cut_off(pending.reply.error):
                            if flight.out.get(i, (None, None))[1] is pending:  # not sent again by a resume yet
                                cut.append((i, pending.reply.error))  # stays out: resumed and asked again
                            continue
                        flight.answers[i] = pending.reply
                        del flight.out[i]
                        answered_envs += self.sizes[i]
                    conn.forget([p for _, p in answered])
                if not cut:
                    continue
                resuming = time.monotonic()
                if resume_by is None:
                    resume_by = resuming + self.session.settings.resume_window
                if self._resume(cut[0][1], resume_by):
                    deadline += time.monotonic() - resuming  # the time a resume takes is not the request's
                    continue
                for i, error in cut:
                    if isinstance(error, RelayUnavailableError):
                        raise error
                    flight.answers[i] = Reply(Kind.ERROR, Op.NONE, self.channels[i], error=self._expired(error))
                    del flight.out[i]
                    answered_envs += self.sizes[i]
        except RelayUnavailableError as exc:
            self.abandon(flight)
            self._rebuild(exc, flight.op)
            return None
        if flight.out and answered_envs < wanted:  # timed out: every shard still out says so
            for i, (conn, pending) in flight.out.items():
                flight.answers[i] = conn.protocol.timed_out(pending, timeout)
            self.abandon(flight)
        if not flight.out:
            self._flights.discard(flight)
        if flight.op == Op.RESET and self.state is Serving.MADE_AGAIN and every_env_reset(flight):
            self.state = Serving.LIVE
        if flight.op == Op.STEP:
            self.session.record_step(time.perf_counter() - flight.started, answered_envs)
        return flight.answered

    # -- resuming ---------------------------------------------------------

    def _cut(self) -> list[int]:
        """Shards whose channel is cut: their connection is lost, or the relay paused it."""
        return [
            i
            for i, (conn, channel) in enumerate(zip(self.conns, self.channels))
            if conn.closed or channel in conn.protocol.paused
        ]

    def _resume(self, cause: RemoteRLError | None, deadline: float) -> bool:
        """Claim every cut shard's channel again (on a fresh connection where its own is
        lost) and send the requests still out on it again, with their seqs, in every
        flight. False if that could not be done by ``deadline`` (the call's window; or
        resuming is off, or the relay reached does not resume): the shards still cut
        are then given up (paused ones for good) by the caller."""
        window = self.session.settings.resume_window
        cut = self._cut()
        if not cut or window <= 0 or any(self.shards[i].token is None for i in cut):
            return False
        started = time.monotonic()
        log.warning("%s: %s; resuming %d of its channels (up to %.0fs)", self.env_id, cause, len(cut), window)
        left = set(cut)
        claimed_on: dict[int, RelayConnection] = {}  # shard -> the live connection its claim waits on
        replaced: dict[RelayConnection, set[RelayConnection]] = {}  # new connection -> the lost ones it replaces
        while left and time.monotonic() < deadline:
            for old, idx in group_by_conn(self.conns, sorted(left)):
                links = self.session.links
                try:
                    conn = links.replace(old, deadline) if old.closed or links.asked_to_move(old) else old
                except RelayUnavailableError as exc:
                    log.debug("resuming %s: %s", self.env_id, exc)
                    if self.closed or self.session.links.closed:
                        deadline = 0.0
                    continue
                if CAP_RESUME not in conn.welcome.capabilities:  # a relay that does not resume: no use waiting
                    deadline = 0.0
                    break
                if conn is not old:
                    replaced.setdefault(conn, set()).add(old)
                claimed_on.update((i, conn) for i in idx)
                claims = [Claim(token=self.shards[i].token, envs=self.sizes[i]) for i in idx]
                try:  # claims meet where the relay says the workspace lives: if asked to move, move first
                    channels = conn.claim(claims, deadline, until=lambda conn=conn: links.asked_to_move(conn))
                except RelayUnavailableError as exc:
                    log.debug("resuming %s: %s", self.env_id, exc)
                    continue
                paired = {i: channels[self.shards[i].token] for i in idx if self.shards[i].token in channels}
                try:
                    self._rebind(conn, paired)
                except RelayUnavailableError as exc:  # the new connection dropped too: claim again
                    log.debug("resuming %s: %s", self.env_id, exc)
                    continue
                left -= paired.keys()
        if left:
            gone = sorted(left)
            claims = [claimed_on.get(i, self.conns[i]) for i in range(len(self.conns))]
            for conn, idx in group_by_conn(claims, gone):
                if not conn.closed:
                    conn.withdraw([self.shards[i].token for i in idx])
            for conn, idx in group_by_conn(self.conns, gone):
                if not conn.closed:
                    conn.give_up([self.channels[i] for i in idx], self._expired(cause))
            log.warning("%s: %d channels did not resume within %.0fs", self.env_id, len(gone), window)
            return False
        self.session.metrics.resumed()
        log.warning("%s resumed after %.2fs", self.env_id, time.monotonic() - started)
        for conn, lost in replaced.items():
            self.session.claim_ahead(conn, lost, skip=self)
        return True

    def claims_on(self, lost: set[RelayConnection]) -> list[Claim]:
        """Claims of this env's shards whose connection is among ``lost`` (claimed ahead,
        on the connection that replaced them, by another env of the session that resumed)."""
        if self.closed:
            return []
        return [
            Claim(token=shard.token, envs=size)
            for conn, shard, size in zip(self.conns, self.shards, self.sizes)
            if conn in lost and shard.token is not None
        ]

    def _rebind(self, conn: RelayConnection, channels: dict[int, int]) -> None:
        """Shards resumed on ``conn`` as ``channels`` (shard -> new channel id); the
        requests still out on them, in every flight, are sent again with their seqs,
        oldest first (the simulator runs them in that order)."""
        again: list[tuple[InFlight, int, Pending]] = []
        for i, channel in channels.items():
            old_conn, old_channel = self.conns[i], self.channels[i]
            if not old_conn.closed:
                old_conn.forget_channels([old_channel])
            shard = self.shards[i].model_copy(update={"channel": channel})
            self.shards[i], self.channels[i], self.conns[i] = shard, channel, conn
            self.made[i] = Made(conn, shard, self.made[i].description)
            conn.adopt_channels([channel])
            conn.limit_channels({channel: self.made[i].description.max_message})
            again += [(flight, i, flight.out[i][1]) for flight in list(self._flights) if i in flight.out]
        if again:
            first = again[0][2].seq
            again.sort(key=lambda item: (item[2].seq - first + 2**31) % 2**32)  # seq order, across a wrap
            news = conn.resend([(pending, self.channels[i]) for _, i, pending in again])
            for (flight, i, _), pending in zip(again, news):
                flight.out[i] = (conn, pending)

    def _expired(self, cause: RemoteRLError | None) -> SimulatorLostError:
        return SimulatorLostError(
            f"{self.env_id}: its simulator did not come back within the resume window "
            f"({self.session.settings.resume_window:g}s)" + (f" after: {cause.message}" if cause is not None else ""),
            code=ErrorCode.RESUME_EXPIRED,
        )

    def abandon(self, flight: InFlight) -> None:
        """Stop waiting for a flight's requests still out (answers already in are kept)."""
        for conn, _, pendings in flight.waiting():
            conn.forget(pendings)
        for i in flight.out:
            if flight.answers[i] is PENDING:
                flight.answers[i] = SKIP
        flight.out.clear()
        self._flights.discard(flight)

    def call(self, op: int, args: list[Any]) -> list[Any]:
        """:meth:`request` for what is not an episode call (attributes, methods): if
        the envs are made again meanwhile it raises, as they are new envs."""
        assert op not in EPISODE_OPS
        answers = self.request(op, args)
        assert answers is not None, "made again: _rebuild raised"
        return answers

    def close_later(self) -> None:
        """Closed now; the envs are closed on the simulators at the session's next call
        (no I/O here: a finalizer's)."""
        if self.closed:
            return
        self.state = Serving.CLOSED
        self.session.release_later(group_channels(self.made))

    def close(self) -> None:
        if self.closed:
            return
        self.state = Serving.CLOSED
        for conn, channels in group_channels(self.made):
            self.session.release(conn, channels, close_first=True)

"""Who may connect, and what each key uses: the relay's side of the accounts.

:class:`Accounting` admits or refuses a hello (key, operator block, quota,
rate limit), meters every peer from the counters the switchboard already
keeps (frame sizes and step counts from routing headers, never payloads),
and once a second (:meth:`Accounting.sync`) flushes those counts to the
accounts backend, reads back what changed (revoked keys, blocked workspaces,
usage from every relay, operator disconnects) and acts on it here.

The backend is the SQLite store in this process (:class:`LocalAccounts`) or,
under Ray Serve, one accounts actor shared by all replicas (``serve_apps/``);
lookups are cached, so a replica asks the backend once per key a minute.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..accounts.plans import Prices
from ..accounts.store import AccountsState, AccountStore, Identity, UsageDelta
from ..protocol.affinity import key_digest
from ..protocol.api_keys import parse_key
from ..protocol.errors import (
    AuthenticationError,
    DisconnectedError,
    ErrorCode,
    QuotaExceededError,
    RateLimitedError,
    RelayUnavailableError,
    RemoteRLError,
    WorkspaceBlockedError,
)
from ..protocol.closing import CLOSE_POLICY, close_reason
from ..protocol.messages import CAP_NOTICE, Notice, Quota, control_frame, error_frame, human_bytes
from .auth import OPEN_WORKSPACE, StaticKeys
from .ratelimit import FailureLimiter
from .switchboard import Peer, Presence, Switchboard

log = logging.getLogger("remoterl.relay")

EMPTY_STATE = AccountsState(frozenset(), frozenset(), {}, {}, [])
CACHE_SECONDS = 60.0  # a good key is looked up once a minute (revocation is pushed by sync anyway)
MISS_CACHE_SECONDS = 5.0  # an unknown key: a new key works within this long


class UsageObserver(Protocol):
    def observe(self, deltas: list[UsageDelta], board: Switchboard) -> None:
        """Sees every second's counts (e.g. to export them as metrics)."""


class AccountsBackend(Protocol):
    async def identify(self, api_key: str) -> tuple[Identity | None, str]: ...

    async def record(self, deltas: list[UsageDelta]) -> None: ...

    async def state(self, kicks_after: int) -> AccountsState: ...

    async def act(self, operator: str, action: str, target: str) -> None: ...

    async def audit_log(self, limit: int) -> list[dict[str, Any]]: ...

    async def cookie_secret(self) -> str: ...

    async def close(self) -> None: ...


class LocalAccounts:
    """The SQLite store in this process, called off the event loop."""

    def __init__(self, store: AccountStore) -> None:
        self.store = store

    async def identify(self, api_key: str) -> tuple[Identity | None, str]:
        return await asyncio.to_thread(self.store.identify, api_key)

    async def record(self, deltas: list[UsageDelta]) -> None:
        await asyncio.to_thread(self.store.record, deltas)

    async def state(self, kicks_after: int) -> AccountsState:
        return await asyncio.to_thread(self.store.state, kicks_after)

    async def act(self, operator: str, action: str, target: str) -> None:
        await asyncio.to_thread(self.store.act, operator, action, target)

    async def audit_log(self, limit: int) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.store.audit_log, limit)

    async def cookie_secret(self) -> str:
        return await asyncio.to_thread(self.store.cookie_secret)

    async def close(self) -> None:
        await asyncio.to_thread(self.store.close)


@dataclass
class _Mark:
    """A peer's counters as far as they were already metered."""

    bytes_in: int
    bytes_out: int
    steps: int
    at: float


class Accounting:
    def __init__(
        self,
        keys: StaticKeys,
        backend: AccountsBackend | None = None,
        prices: Prices | None = None,
        limiter: FailureLimiter | None = None,
        observers: Sequence[UsageObserver] = (),
    ) -> None:
        self.keys = keys
        self.observers = tuple(observers)
        self.backend = backend
        self.prices = prices or Prices()
        self.limiter = limiter or FailureLimiter()
        self.state = EMPTY_STATE
        self._cache: dict[str, tuple[float, Identity | None, str]] = {}
        self._marks: dict[str, _Mark] = {}
        self._pending: list[UsageDelta] = []  # counted, not yet stored
        self._kicks_seen = 0
        self._told_over_quota: set[str] = set()

    # -- admission ------------------------------------------------------------

    def check_rate(self, source: str) -> None:
        """Raise ``RateLimitedError`` while ``source`` must wait after too many refusals."""
        wait = self.limiter.limited(source)
        if wait:
            raise RateLimitedError(
                f"too many refused connection attempts from {source}; try again in {wait:.0f} s with a valid key"
            )

    def failed(self, source: str) -> None:
        """``source`` was refused (bad key, malformed or missing hello): it counts towards its limit."""
        self.limiter.failed(source)

    async def admit(self, api_key: str | None, source: str) -> Identity:
        """The identity a hello may open a session as; raises a coded error otherwise
        (after :meth:`check_rate`, which the caller runs before reading the hello)."""
        identity, why = await self._identify(api_key)
        if identity is None:
            self.failed(source)
            if why == "revoked":
                raise AuthenticationError("this API key was revoked by the relay operator", code=ErrorCode.KEY_REVOKED)
            if not api_key:
                raise AuthenticationError("an API key is required: this relay is not in open mode")
            raise AuthenticationError("API key rejected by the relay: unknown, mistyped or truncated")
        workspace = identity.workspace
        if workspace in self.state.blocked:
            raise WorkspaceBlockedError(
                f"workspace {workspace} is blocked by the relay operator: new sessions are refused"
            )
        quota = self.quota(workspace, identity.plan)
        if quota.exhausted:
            raise QuotaExceededError(self._over_quota_message(workspace, quota, "new sessions are refused"))
        return identity

    async def _identify(self, api_key: str | None) -> tuple[Identity | None, str]:
        """``(identity, "")``, or ``(None, why)`` with why "unknown" or "revoked"."""
        if not api_key:
            return (Identity("open", OPEN_WORKSPACE, None), "") if self.keys.open_mode else (None, "unknown")
        if self.backend is not None and parse_key(api_key) is not None:
            identity, why = await self._lookup(api_key)
            if identity is not None and identity.key_id in self.state.revoked:  # revoked since it was cached
                identity, why = None, "revoked"
            if identity is not None or why == "revoked":
                return identity, why  # a revoked key stays refused, open mode or not
        workspace = self.keys.workspace_of(api_key)
        if workspace is None:
            return None, "unknown"
        return Identity(f"static-{key_digest(api_key)[:12]}", workspace, None), ""

    async def _lookup(self, api_key: str) -> tuple[Identity | None, str]:
        digest = key_digest(api_key)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1], cached[2]
        assert self.backend is not None
        try:
            identity, why = await self.backend.identify(api_key)
        except Exception as exc:  # the store is restarting: the client retries with backoff
            log.warning("accounts store unavailable for a key lookup: %s", exc)
            raise RelayUnavailableError("the relay's accounts store is not reachable; try again") from None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now + (CACHE_SECONDS if identity else MISS_CACHE_SECONDS), identity, why)
        return identity, why

    def quota(self, workspace: str, plan: str | None = None) -> Quota:
        """The workspace's plan (``plan`` if the store has none) and traffic this month, unstored counts included."""
        plan = self.state.plans.get(workspace, plan)
        used = self.state.used_bytes.get(workspace, 0)
        used += sum(d.bytes_in + d.bytes_out for d in self._pending if d.workspace == workspace)
        return Quota(plan=plan, used_bytes=used, included_bytes=self.prices.included_bytes(plan))

    def _over_quota_message(self, workspace: str, quota: Quota, consequence: str) -> str:
        return (
            f"workspace {workspace} used {human_bytes(quota.used_bytes)} of the "
            f"{human_bytes(quota.included_bytes or 0)} its {quota.plan} plan includes this month; {consequence}"
        )

    # -- metering -----------------------------------------------------------

    def _delta(self, peer: Peer, now: float) -> UsageDelta:
        mark = self._marks.get(peer.id) or _Mark(0, 0, 0, peer.connected_at)
        elapsed = max(0.0, now - mark.at)
        delta = UsageDelta(
            key_id=peer.key_id,
            workspace=peer.workspace,
            role=peer.role,
            bytes_in=peer.bytes_in - mark.bytes_in,
            bytes_out=peer.bytes_out - mark.bytes_out,
            steps=peer.env_steps - mark.steps,
            connection_seconds=elapsed,
        )
        if elapsed > 0:
            peer.steps_per_s = delta.steps / elapsed
        self._marks[peer.id] = _Mark(peer.bytes_in, peer.bytes_out, peer.env_steps, now)
        return delta

    def settle(self, peer: Peer) -> None:
        """A peer left: keep its last counts for the next flush."""
        self._pending.append(self._delta(peer, time.time()))
        self._marks.pop(peer.id, None)

    def collect(self, board: Switchboard) -> list[UsageDelta]:
        """Everything counted since the last call, one row per key and role (also
        refreshes each peer's steps/s)."""
        now = time.time()
        deltas, self._pending = self._pending, []
        deltas += [self._delta(peer, now) for peer in board.peers()]
        rows: dict[tuple[str, str, str], UsageDelta] = {}
        for d in deltas:
            key = (d.key_id, d.workspace, d.role)
            rows[key] = d if key not in rows else d + rows[key]
        return list(rows.values())

    # -- once a second ------------------------------------------------------

    async def sync(self, board: Switchboard) -> None:
        """Store the counts, then read and enforce the shared state (even if storing failed)."""
        deltas = self.collect(board)
        stored = True
        if self.backend is not None:
            try:
                await self.backend.record(deltas)
            except Exception:
                stored = False
                self._pending = deltas + self._pending  # kept for the next try
                log.warning("usage not stored yet (kept for the next try)", exc_info=True)
        for observer in self.observers if stored else ():
            try:
                observer.observe(deltas, board)
            except Exception:
                log.warning("usage observer failed", exc_info=True)
        await self.refresh()
        await self._enforce(board)

    async def refresh(self) -> None:
        """Read the shared state now (an operator action just changed it)."""
        if self.backend is not None:
            self.state = await self.backend.state(self._kicks_seen)

    async def _enforce(self, board: Switchboard) -> None:
        state = self.state
        kicked = {peer_id for _, peer_id in state.kicks}
        if state.kicks:
            self._kicks_seen = max(kick_id for kick_id, _ in state.kicks)
        for peer in board.peers():
            if peer.key_id in state.revoked:
                await self.cut_off(peer, AuthenticationError("this API key was revoked", code=ErrorCode.KEY_REVOKED))
            elif peer.id in kicked:
                await self.disconnect(peer)
        for workspace in list(board.workspaces):
            quota = self.quota(workspace)
            if not quota.exhausted:
                self._told_over_quota.discard(workspace)
                continue
            if workspace in self._told_over_quota:
                continue
            self._told_over_quota.add(workspace)
            notice = Notice(
                code=ErrorCode.QUOTA_EXCEEDED.value,
                message=self._over_quota_message(workspace, quota, "running sessions go on, new ones are refused"),
            )
            log.warning("%s", notice.message)
            for peer in board.peers(workspace):
                if CAP_NOTICE in peer.capabilities:
                    await _bounded(peer.send(control_frame(notice)))

    async def disconnect(self, peer: Peer) -> None:
        """An operator's disconnect: the peer is told so, and does not dial again on its own."""
        await self.cut_off(peer, DisconnectedError("disconnected by the relay operator"))

    async def cut_off(self, peer: Peer, error: RemoteRLError) -> None:
        """Tell ``peer`` why, then close its connection (its handler then leaves the board)."""
        if not peer.alive:
            return
        log.info("closing %s (%s): %s", peer.id, peer.workspace, error.message)
        await _bounded(peer.send(error_frame(error.to_wire())))
        peer.presence = Presence.CUT_OFF
        try:
            await _bounded(peer.close(CLOSE_POLICY, close_reason(error)))
        except Exception as exc:  # already gone
            log.debug("closing %s failed: %s", peer.id, exc)


SEND_SECONDS = 2.0  # a peer that does not read cannot hold up the accounts loop longer than this


async def _bounded(step: Awaitable[Any]) -> None:
    try:
        await asyncio.wait_for(step, SEND_SECONDS)
    except asyncio.TimeoutError:
        log.debug("a peer did not take a frame within %ss", SEND_SECONDS)

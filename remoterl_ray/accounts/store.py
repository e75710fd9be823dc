"""The accounts store: workspaces, keys (salted hashes), usage, operator actions.

One SQLite file (WAL mode), written by the relay (usage, operator actions)
and by ``remoterl keys`` (keys). Counters only: frame sizes, step counts and
connection time. Nothing from a payload is ever written here.

Usage is kept per hour, key and role, so ``remoterl usage --since`` can cut
at any hour and a relay adds its counts with one upsert per row.
"""

from __future__ import annotations

import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..protocol.api_keys import parse_key
from .keys import hash_key, key_matches, new_key, new_salt, new_tag
from .plans import PLANS

WORKSPACE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS workspaces (
    name TEXT PRIMARY KEY, tag TEXT UNIQUE NOT NULL, plan TEXT NOT NULL,
    created REAL NOT NULL, blocked INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY, workspace TEXT NOT NULL REFERENCES workspaces(name),
    salt TEXT NOT NULL, hash TEXT NOT NULL, created REAL NOT NULL, revoked REAL);
CREATE TABLE IF NOT EXISTS usage (
    hour INTEGER NOT NULL, key_id TEXT NOT NULL, workspace TEXT NOT NULL, role TEXT NOT NULL,
    bytes_in INTEGER NOT NULL DEFAULT 0, bytes_out INTEGER NOT NULL DEFAULT 0,
    steps INTEGER NOT NULL DEFAULT 0, connection_seconds REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, key_id, role));
CREATE INDEX IF NOT EXISTS usage_by_workspace ON usage (workspace, hour);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, operator TEXT NOT NULL,
    action TEXT NOT NULL, target TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kicks (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, peer_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
RESERVED = re.compile(r"^(open|ws-.*)$")  # the open-mode and --api-key workspaces


class AccountsError(ValueError):
    """A bad request to the store (unknown key id, bad workspace name...)."""


@dataclass(frozen=True)
class Identity:
    """Who an accepted key belongs to."""

    key_id: str
    workspace: str
    plan: str | None  # None: a static key from the relay's command line (no plan, no quota)


@dataclass(frozen=True)
class IssuedKey:
    key_id: str
    key: str  # shown once, never stored
    workspace: str
    plan: str


@dataclass(frozen=True)
class UsageDelta:
    """Counts one peer added since the last flush."""

    key_id: str
    workspace: str
    role: str
    bytes_in: int = 0
    bytes_out: int = 0
    steps: int = 0
    connection_seconds: float = 0.0

    def __add__(self, other: UsageDelta) -> UsageDelta:
        return replace(
            self,
            bytes_in=self.bytes_in + other.bytes_in,
            bytes_out=self.bytes_out + other.bytes_out,
            steps=self.steps + other.steps,
            connection_seconds=self.connection_seconds + other.connection_seconds,
        )


@dataclass(frozen=True)
class AccountsState:
    """What every relay polls: enough to refuse, close and warn without a query per frame."""

    revoked: frozenset[str]
    blocked: frozenset[str]
    plans: dict[str, str]
    used_bytes: dict[str, int]  # this month, per workspace
    kicks: list[tuple[int, str]]  # (id, peer id) of recent disconnect requests


def month_start(now: float | None = None) -> float:
    t = datetime.fromtimestamp(time.time() if now is None else now, timezone.utc)
    return t.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


class AccountStore:
    """Thread-safe: one connection, one lock (the relay calls it from a worker thread)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        umask = os.umask(0o077)  # the file, its WAL and its directory: the operator's business only
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=10.0, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            with self._lock:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA busy_timeout=10000")
                self._db.executescript(_SCHEMA)
                self._db.execute(
                    "INSERT OR IGNORE INTO meta (name, value) VALUES ('cookie_secret', ?)", (secrets.token_hex(32),)
                )
        finally:
            os.umask(umask)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; taken at once so a concurrent writer waits instead of failing later."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    # -- keys ---------------------------------------------------------------

    def create_key(self, workspace: str, plan: str | None = None) -> IssuedKey:
        """Issue a key for ``workspace`` (created on first use, plan ``free`` unless given).

        ``plan`` on an existing workspace changes its plan."""
        if not WORKSPACE_NAME.match(workspace) or RESERVED.match(workspace):
            raise AccountsError(
                f"workspace name {workspace!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or"
                " digit ('open' and 'ws-...' are reserved)"
            )
        if plan is not None and plan not in PLANS:
            raise AccountsError(f"unknown plan {plan!r}; plans are {', '.join(PLANS)}")
        now = time.time()
        with self._write() as db:
            row = db.execute("SELECT tag, plan FROM workspaces WHERE name = ?", (workspace,)).fetchone()
            if row is None:
                tag, current = new_tag(), plan or "free"
                db.execute(
                    "INSERT INTO workspaces (name, tag, plan, created) VALUES (?, ?, ?, ?)",
                    (workspace, tag, current, now),
                )
            else:
                tag, current = row["tag"], plan or row["plan"]
                db.execute("UPDATE workspaces SET plan = ? WHERE name = ?", (current, workspace))
            key_id, key = new_key(tag)
            salt = new_salt()
            db.execute(
                "INSERT INTO keys (key_id, workspace, salt, hash, created) VALUES (?, ?, ?, ?, ?)",
                (key_id, workspace, salt, hash_key(salt, key), now),
            )
        return IssuedKey(key_id=key_id, key=key, workspace=workspace, plan=current)

    def list_keys(self) -> list[dict[str, Any]]:
        rows = self._query(
            "SELECT k.key_id, k.workspace, w.plan, k.created, k.revoked FROM keys k"
            " JOIN workspaces w ON w.name = k.workspace ORDER BY k.workspace, k.created"
        )
        return [dict(r) for r in rows]

    def revoke(self, key_id: str) -> dict[str, Any]:
        with self._write() as db:
            row = db.execute("SELECT workspace, revoked FROM keys WHERE key_id = ?", (key_id,)).fetchone()
            if row is None:
                raise AccountsError(f"no key with id {key_id!r}")
            if row["revoked"] is None:
                db.execute("UPDATE keys SET revoked = ? WHERE key_id = ?", (time.time(), key_id))
        return {"key_id": key_id, "workspace": row["workspace"], "already_revoked": row["revoked"] is not None}

    def identify(self, api_key: str) -> tuple[Identity | None, str]:
        """``(identity, "")`` for a good key, else ``(None, why)`` with why "unknown" or "revoked"."""
        parsed = parse_key(api_key)
        if parsed is None:
            return None, "unknown"
        rows = self._query(
            "SELECT k.salt, k.hash, k.revoked, k.workspace, w.plan, w.tag FROM keys k"
            " JOIN workspaces w ON w.name = k.workspace WHERE k.key_id = ?",
            (parsed.key_id,),
        )
        if not rows or rows[0]["tag"] != parsed.tag or not key_matches(rows[0]["salt"], rows[0]["hash"], api_key):
            return None, "unknown"
        if rows[0]["revoked"] is not None:
            return None, "revoked"
        return Identity(parsed.key_id, rows[0]["workspace"], rows[0]["plan"]), ""

    # -- usage --------------------------------------------------------------

    def record(self, deltas: Iterable[UsageDelta], now: float | None = None) -> None:
        hour = int((time.time() if now is None else now) // 3600)
        rows = [
            (hour, d.key_id, d.workspace, d.role, d.bytes_in, d.bytes_out, d.steps, d.connection_seconds)
            for d in deltas
        ]
        if not rows:
            return
        with self._write() as db:
            db.executemany(
                "INSERT INTO usage (hour, key_id, workspace, role, bytes_in, bytes_out, steps, connection_seconds)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (hour, key_id, role) DO UPDATE SET"
                " bytes_in = bytes_in + excluded.bytes_in, bytes_out = bytes_out + excluded.bytes_out,"
                " steps = steps + excluded.steps,"
                " connection_seconds = connection_seconds + excluded.connection_seconds",
                rows,
            )

    def usage(self, workspace: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
        """Per key and role: summed counters since ``since`` (a UNIX time, cut at its hour)."""
        where, args = ["u.hour >= ?"], [int((since or 0) // 3600)]
        if workspace is not None:
            where.append("u.workspace = ?")
            args.append(workspace)
        rows = self._query(
            "SELECT u.workspace, u.key_id, u.role, w.plan, SUM(u.bytes_in) AS bytes_in,"
            " SUM(u.bytes_out) AS bytes_out, SUM(u.steps) AS steps,"
            " SUM(u.connection_seconds) AS connection_seconds FROM usage u"
            " LEFT JOIN workspaces w ON w.name = u.workspace"
            f" WHERE {' AND '.join(where)} GROUP BY u.workspace, u.key_id, u.role"
            " ORDER BY u.workspace, u.key_id, u.role",
            args,
        )
        return [dict(r) for r in rows]

    # -- what relays poll ---------------------------------------------------

    def state(self, kicks_after: int = 0, now: float | None = None) -> AccountsState:
        now = time.time() if now is None else now
        revoked = {r[0] for r in self._query("SELECT key_id FROM keys WHERE revoked IS NOT NULL")}
        workspaces = self._query("SELECT name, plan, blocked FROM workspaces")
        used = self._query(
            "SELECT workspace, SUM(bytes_in + bytes_out) FROM usage WHERE hour >= ? GROUP BY workspace",
            (int(month_start(now) // 3600),),
        )
        kicks = self._query(
            "SELECT id, peer_id FROM kicks WHERE id > ? AND at > ? ORDER BY id", (kicks_after, now - 60.0)
        )
        return AccountsState(
            revoked=frozenset(revoked),
            blocked=frozenset(r["name"] for r in workspaces if r["blocked"]),
            plans={r["name"]: r["plan"] for r in workspaces},
            used_bytes={r[0]: int(r[1] or 0) for r in used},
            kicks=[(r["id"], r["peer_id"]) for r in kicks],
        )

    # -- operator actions ---------------------------------------------------

    def act(self, operator: str, action: str, target: str) -> None:
        """Carry out an operator action and record it in the audit log, in one transaction.

        ``block``/``unblock`` a workspace's new sessions; ``disconnect`` a peer
        (every relay polling this store closes it if it holds it)."""
        now = time.time()
        with self._write() as db:
            if action in ("block", "unblock"):
                cur = db.execute("UPDATE workspaces SET blocked = ? WHERE name = ?", (int(action == "block"), target))
                if cur.rowcount == 0:
                    raise AccountsError(f"no workspace named {target!r}")
            elif action == "disconnect":
                db.execute("INSERT INTO kicks (at, peer_id) VALUES (?, ?)", (now, target))
                db.execute("DELETE FROM kicks WHERE at < ?", (now - 3600,))
            else:
                raise AccountsError(f"unknown operator action {action!r}")
            db.execute(
                "INSERT INTO audit (at, operator, action, target) VALUES (?, ?, ?, ?)", (now, operator, action, target)
            )

    def cookie_secret(self) -> str:
        """A random secret made with the store: signs operator logins (never in any config)."""
        return self._query("SELECT value FROM meta WHERE name = 'cookie_secret'")[0][0]

    def audit_log(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self._query("SELECT at, operator, action, target FROM audit ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(r) for r in rows]

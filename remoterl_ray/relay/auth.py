"""Which API keys the relay accepts, and the workspace each key belongs to.

Keys are never kept in clear: only their SHA-256 digests are held, and the
workspace name is derived from the digest, so a log line or a stats page
never reveals a key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Protocol

OPEN_WORKSPACE = "open"


def key_digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def workspace_for_key(api_key: str) -> str:
    """The per-key workspace name: a short, stable, non-reversible tag."""
    return "ws-" + key_digest(api_key)[:12]


class KeyStore(Protocol):
    def workspace_of(self, api_key: str | None) -> str | None:
        """The workspace ``api_key`` opens, or None to refuse it."""


class StaticKeys:
    """A fixed set of keys (``remoterl relay --api-key ...``), optionally open mode.

    In open mode any key is accepted and gets its own workspace; no key at all
    lands in the shared ``open`` workspace. Outside open mode a missing key is
    refused.
    """

    def __init__(self, keys: Iterable[str] = (), *, open_mode: bool = False) -> None:
        self._digests = frozenset(key_digest(k) for k in keys if k)
        self.open_mode = open_mode
        if not self._digests and not open_mode:
            raise ValueError("a relay needs at least one API key, or open mode")

    def workspace_of(self, api_key: str | None) -> str | None:
        if not api_key:
            return OPEN_WORKSPACE if self.open_mode else None
        digest = key_digest(api_key)
        known = any(hmac.compare_digest(digest, d) for d in self._digests)
        if known or self.open_mode:
            return "ws-" + digest[:12]
        return None

"""Which API keys the relay accepts, and the workspace each key belongs to.

Keys are never kept in clear: only their SHA-256 digests are held, and the
workspace name is derived from a digest of the *whole* key, so a log line or
a stats page never reveals a key, and knowing a key's public parts (its
affinity header, an account key's workspace tag) reaches no workspace.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from ..protocol.affinity import OPEN_SESSION, key_digest

OPEN_WORKSPACE = OPEN_SESSION  # keyless peers of an open-mode relay: one shared workspace, named so


def workspace_for_key(api_key: str) -> str:
    """The per-key workspace name: 128 bits of a digest of the whole key,
    secret included. Unlike the affinity header (``ws-`` and 48 bits, sent in
    clear), it cannot be derived from anything a key holder shows on the wire,
    and 128 bits cannot be searched for a collision."""
    return "ws-" + hashlib.sha256(b"remoterl workspace\x00" + api_key.encode("utf-8")).hexdigest()[:32]


class StaticKeys:
    """The keys given on the relay's command line (``--api-key``), optionally open mode.

    Account keys (``remoterl keys create``) live in the accounts store instead.

    In open mode any key is accepted and gets its own workspace (two peers meet
    only if they hold the very same key); no key at all lands in the one shared
    workspace named ``open``. Outside open mode a missing key is refused.
    """

    def __init__(self, keys: Iterable[str] = (), *, open_mode: bool = False, digests: Iterable[str] = ()) -> None:
        """``digests``: SHA-256 hex digests of keys, so a deployment config
        need not hold keys in clear (``remoterl_ray.protocol.affinity.key_digest``)."""
        self._digests = frozenset(key_digest(k) for k in keys if k) | frozenset(d.lower() for d in digests if d)
        self.open_mode = open_mode

    def __bool__(self) -> bool:
        """Whether these keys admit anyone at all."""
        return bool(self._digests) or self.open_mode

    def workspace_of(self, api_key: str | None) -> str | None:
        if not api_key:
            return OPEN_WORKSPACE if self.open_mode else None
        digest = key_digest(api_key)
        known = any(hmac.compare_digest(digest, d) for d in self._digests)
        if known or self.open_mode:
            return workspace_for_key(api_key)
        return None

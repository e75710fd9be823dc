"""Which relay replica a connection should reach: the session-affinity header.

Under Ray Serve the relay runs as several replicas; a trainer only meets the
simulators of its workspace if all of them land in the same replica. Every
client therefore sends ``x-session-id`` (Serve's ``ConsistentHashRouter``
hashes it onto the replica ring), derived from the API key: an account key's
workspace tag (``protocol.api_keys``), so every key of a workspace means one
replica, or else a slow digest of the key (a key chosen by a person may be
guessable from a fast one). The header never reveals the key, and it opens
nothing: a workspace needs the whole key.
"""

from __future__ import annotations

import functools
import hashlib

from .api_keys import parse_key

SESSION_HEADER = "x-session-id"  # Serve's default RAY_SERVE_SESSION_ID_HEADER_KEY
OPEN_SESSION = "open"  # keyless peers of an open-mode relay share one workspace


def key_digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


AFFINITY_ROUNDS = 200_000  # PBKDF2 rounds: tens of milliseconds once per process and key


@functools.lru_cache(maxsize=64)
def session_id_for(api_key: str | None) -> str:
    """The affinity header value for ``api_key``: its workspace's tag, or 48 bits of
    a PBKDF2 digest of a key that carries none (sent in clear, so slow to search)."""
    if not api_key:
        return OPEN_SESSION
    parsed = parse_key(api_key)
    if parsed is not None:
        return "ws-" + parsed.tag
    digest = hashlib.pbkdf2_hmac("sha256", api_key.encode("utf-8"), b"remoterl affinity", AFFINITY_ROUNDS, dklen=6)
    return "ws-" + digest.hex()

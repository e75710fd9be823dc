"""Which relay replica a connection should reach: the session-affinity header.

Under Ray Serve the relay runs as several replicas; a trainer only meets the
simulators of its workspace if all of them land in the same replica. Every
client therefore sends ``x-session-id`` (Serve's ``ConsistentHashRouter``
hashes it onto the replica ring), derived from the API key: an account key's
workspace tag (``protocol.api_keys``), so every key of a workspace means one
replica, or else a digest of the key. The header never reveals the key.
"""

from __future__ import annotations

import hashlib

from .api_keys import parse_key

SESSION_HEADER = "x-session-id"  # Serve's default RAY_SERVE_SESSION_ID_HEADER_KEY
OPEN_SESSION = "open"  # keyless peers of an open-mode relay share one workspace


def key_digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def session_id_for(api_key: str | None) -> str:
    """The affinity header value for ``api_key``: its workspace's tag."""
    if not api_key:
        return OPEN_SESSION
    parsed = parse_key(api_key)
    return "ws-" + (parsed.tag if parsed else key_digest(api_key)[:12])

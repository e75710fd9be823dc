"""Which relay replica a connection should reach: the session-affinity header.

Under Ray Serve the relay runs as several replicas; a trainer only meets the
simulators of its workspace if all of them land in the same replica. Every
client therefore sends ``x-session-id`` (Serve's ``ConsistentHashRouter``
hashes it onto the replica ring), derived from the API key the same way the
relay derives the workspace, so one key means one replica. The value is a
one-way digest: the header never reveals the key.
"""

from __future__ import annotations

import hashlib

SESSION_HEADER = "x-session-id"  # Serve's default RAY_SERVE_SESSION_ID_HEADER_KEY
OPEN_SESSION = "open"  # keyless peers of an open-mode relay share one workspace


def key_digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def session_id_for(api_key: str | None) -> str:
    """The affinity header value for ``api_key``: its workspace tag."""
    return "ws-" + key_digest(api_key)[:12] if api_key else OPEN_SESSION

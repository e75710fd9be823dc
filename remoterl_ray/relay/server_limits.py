"""The embedded relay's connection limits, with their defaults.

One model for the command line (``remoterl relay --max-connections ...``),
the config file (``limits:``) and the server that enforces them
(``guarded_server.py``); docs/security.md lists them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..protocol.frames import DEFAULT_MAX_FRAME

MIN_PEER_BUFFER = 64 * 1024 * 1024


class ServerLimits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_connections: int = Field(
        default=8192, ge=1, description="Open connections in all (also kept below the open-file limit)."
    )
    max_connections_per_address: int = Field(
        default=1024, ge=1, description="Open connections from one client address (an IPv6 /64)."
    )
    max_pending_per_address: int = Field(
        default=64, ge=1, description="Connections from one address not yet admitted (HTTP, WebSockets before hello)."
    )
    handshake_timeout: float = Field(
        default=10.0, gt=0, le=300, description="Seconds for a whole HTTP request (or upgrade) to arrive."
    )
    max_header_bytes: int = Field(default=8192, ge=1024, le=65536, description="HTTP request headers, in all.")
    pre_auth_message: int = Field(
        default=65_536, ge=8192, description="Largest message a peer may send before its hello is accepted."
    )
    pre_auth_buffer: int = Field(
        default=65_536, ge=4096, description="Bytes queued to a peer not yet admitted before it is cut off."
    )
    peer_buffer: int = Field(
        default=max(MIN_PEER_BUFFER, 4 * DEFAULT_MAX_FRAME),
        ge=65_536,
        description="Bytes queued to an admitted peer that does not read before it is cut off.",
    )
    max_queued_bytes: int = Field(
        default=1 << 30,
        ge=1 << 20,
        description="Bytes queued to all peers together; past it, the peer with the most queued is cut off.",
    )
    close_timeout: float = Field(
        default=5.0, gt=0, le=60, description="Seconds a closing peer has to take our last bytes."
    )

    @classmethod
    def for_frame(cls, max_frame: int, **overrides: Any) -> ServerLimits:
        """Limits whose peer buffer holds a few of the largest frames, unless ``overrides`` set it.
        A peer buffer that cannot hold two frames would cut off every peer sent a large one."""
        limits = cls(**{"peer_buffer": max(MIN_PEER_BUFFER, 4 * max_frame), **overrides})
        if limits.peer_buffer < 2 * max_frame:
            raise ValueError(
                f"the peer buffer ({limits.peer_buffer} bytes) must hold two frames of --max-frame ({max_frame})"
            )
        return limits

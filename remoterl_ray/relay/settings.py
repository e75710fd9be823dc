"""The relay's config file (``remoterl relay --config relay.yaml``).

Everything an operator sets that the wire never can: where the accounts
store lives, the operators and their admin tokens, and plan prices.

.. code-block:: yaml

    db: /var/lib/remoterl/relay.db
    admin_tokens:
      alice: sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    rate_limit: {max_failures: 20, window_seconds: 10, cooldown_seconds: 30}
    flush_seconds: 1
    hello_timeout: 10
    max_protocol_errors: 100
    max_channels_per_trainer: 4096
    limits: {max_connections: 8192, max_connections_per_address: 1024, handshake_timeout: 10}
    trusted_proxies: [10.0.0.5]
    prices:
      free_included_bytes: 1000000000
      premium_per_gb: 0.10
      premium_per_connection_minute: 0.001
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..accounts.plans import Prices
from .admin import token_digest
from .ratelimit import FailureLimiter
from .server_limits import ServerLimits


class RateLimit(BaseModel):
    """Refused hellos and admin logins per source address before it must wait."""

    model_config = ConfigDict(extra="forbid")

    max_failures: int = Field(default=20, ge=1)
    window_seconds: float = Field(default=10.0, gt=0)
    cooldown_seconds: float = Field(default=30.0, gt=0)


class RelaySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    db: str | None = Field(
        default=None, description="Accounts store; --db and REMOTERL_DB come first, ~/.remoterl/relay.db last."
    )
    admin_tokens: dict[str, str] = Field(
        default_factory=dict, description="Operator name -> admin token, or 'sha256:<hex digest>' of it."
    )
    prices: Prices = Field(default_factory=Prices)
    rate_limit: RateLimit = Field(default_factory=RateLimit)
    flush_seconds: float = Field(
        default=1.0, gt=0, le=60, description="Usage is stored this often (a crash loses at most this much)."
    )
    hello_timeout: float = Field(default=10.0, gt=0, le=300, description="Seconds a new peer has to send its hello.")
    max_protocol_errors: int = Field(
        default=100, ge=1, description="Refused frames a peer may send at once (refilled per minute) before it is cut off."
    )
    max_channels_per_trainer: int = Field(
        default=4096, ge=1, description="Open channels (env shards) one trainer connection may hold."
    )
    limits: ServerLimits = Field(
        default_factory=ServerLimits, description="Connection limits of the embedded relay (relay/server_limits.py)."
    )
    trusted_proxies: list[str] = Field(
        default_factory=list, description="Proxies whose X-Forwarded-For is believed (none by default)."
    )
    local_stats: bool = Field(
        default=False,
        description="Without an admin token, answer /v1/stats and /v1/cluster on loopback (no proxy on this host).",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses(cls, proxies: list[str]) -> list[str]:
        for proxy in proxies:
            ipaddress.ip_network(proxy, strict=False)  # an address or a network; a ValueError names it
        return proxies

    def peer_limits(self) -> dict[str, Any]:
        """The relay app's own limits (``RelayConfig`` fields), embedded or on Serve."""
        return {
            "hello_timeout": self.hello_timeout,
            "max_protocol_errors": self.max_protocol_errors,
            "max_channels_per_trainer": self.max_channels_per_trainer,
            "local_stats": self.local_stats,
        }

    def server_limits(self, max_frame: int, **flags: Any) -> ServerLimits:
        """The config's limits, then the command line's (flags that are None are not given)."""
        given = {k: v for k, v in flags.items() if v is not None}
        return ServerLimits.for_frame(max_frame, **{**self.limits.model_dump(exclude_unset=True), **given})

    @field_validator("admin_tokens")
    @classmethod
    def _names_and_tokens(cls, tokens: dict[str, str]) -> dict[str, str]:
        for name, token in tokens.items():
            if not name or "|" in name or len(name) > 64:
                raise ValueError(f"operator name {name!r}: 1-64 characters, no '|'")
            if token.startswith("sha256:") and not re.fullmatch(r"[0-9a-fA-F]{64}", token[7:]):
                raise ValueError(f"the admin token digest of {name!r} is not 64 hex digits after 'sha256:'")
            if len(token) < 16:
                raise ValueError(f"the admin token of {name!r} is too short (at least 16 characters)")
        if len({token_digest(t) for t in tokens.values()}) < len(tokens):
            raise ValueError("two operators share one admin token: the audit log could not tell them apart")
        return tokens

    def limiter(self) -> FailureLimiter:
        limit = self.rate_limit
        return FailureLimiter(limit.max_failures, limit.window_seconds, limit.cooldown_seconds)

    def admin_digests(self) -> dict[str, str]:
        return {name: token_digest(token) for name, token in self.admin_tokens.items()}


def load_settings(path: str | Path | None) -> RelaySettings:
    if path is None:
        return RelaySettings()
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return RelaySettings.model_validate(data)

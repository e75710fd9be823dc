"""The relay's config file (``remoterl relay --config relay.yaml``).

Everything an operator sets that the wire never can: where the accounts
store lives, the operators and their admin tokens, and plan prices.

.. code-block:: yaml

    db: /var/lib/remoterl/relay.db
    admin_tokens:
      alice: sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    rate_limit: {max_failures: 20, window_seconds: 10, cooldown_seconds: 30}
    flush_seconds: 1
    prices:
      free_included_bytes: 1000000000
      premium_per_gb: 0.10
      premium_per_connection_minute: 0.001
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..accounts.plans import Prices
from .admin import token_digest
from .ratelimit import FailureLimiter


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

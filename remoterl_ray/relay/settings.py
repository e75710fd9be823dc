"""The relay's config file (``remoterl relay --config relay.yaml``).

Everything an operator sets that the wire never can: where the accounts
store lives, the operators and their admin tokens, and plan prices.

.. code-block:: yaml

    db: /var/lib/remoterl/relay.db
    admin_tokens:
      alice: sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    prices:
      free_included_bytes: 1000000000
      premium_per_gb: 0.10
      premium_per_connection_minute: 0.001
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..accounts.plans import Prices
from .admin import token_digest


class RelaySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    db: str | None = Field(default=None, description="Accounts store (default REMOTERL_DB or ~/.remoterl/relay.db).")
    admin_tokens: dict[str, str] = Field(
        default_factory=dict, description="Operator name -> admin token, or 'sha256:<hex digest>' of it."
    )
    prices: Prices = Field(default_factory=Prices)

    @field_validator("admin_tokens")
    @classmethod
    def _names_and_tokens(cls, tokens: dict[str, str]) -> dict[str, str]:
        for name, token in tokens.items():
            if not name or "|" in name or len(name) > 64:
                raise ValueError(f"operator name {name!r}: 1-64 characters, no '|'")
            if len(token) < 16:
                raise ValueError(f"the admin token of {name!r} is too short (at least 16 characters)")
        return tokens

    def admin_digests(self) -> dict[str, str]:
        return {name: token_digest(token) for name, token in self.admin_tokens.items()}


def load_settings(path: str | Path | None) -> RelaySettings:
    if path is None:
        return RelaySettings()
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return RelaySettings.model_validate(data)

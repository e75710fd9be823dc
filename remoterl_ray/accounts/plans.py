"""Plans and prices: what a workspace may use, and what its usage costs.

``free`` includes a fixed amount of traffic a month (bytes into and out of
the relay, summed), then new sessions are refused; ``premium`` has no cap and
is billed per GB and per connection-minute. The numbers come from the relay's
config (:class:`Prices`), never from the wire.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


PLANS = ("free", "premium")
GB = 10**9


class Prices(BaseModel):
    model_config = ConfigDict(extra="forbid")

    free_included_bytes: int = Field(default=GB, ge=0, description="Traffic a free workspace may use each month.")
    premium_per_gb: float = Field(default=0.10, ge=0, description="Price of one GB of traffic (10^9 bytes).")
    premium_per_connection_minute: float = Field(
        default=0.001, ge=0, description="Price of one minute of one trainer or simulator connection."
    )
    currency: str = "USD"

    def included_bytes(self, plan: str | None) -> int | None:
        """The traffic cap of ``plan`` (None: no cap)."""
        return self.free_included_bytes if plan == "free" else None

    def cost(self, plan: str | None, traffic_bytes: int, connection_seconds: float) -> float:
        if plan != "premium":
            return 0.0
        return traffic_bytes / GB * self.premium_per_gb + connection_seconds / 60 * self.premium_per_connection_minute


def _zero() -> dict[str, Any]:
    return {
        "bytes_in": 0,
        "bytes_out": 0,
        "steps": 0,
        "steps_served": 0,
        "trainer_minutes": 0.0,
        "simulator_minutes": 0.0,
    }


def usage_summary(rows: list[dict[str, Any]], prices: Prices) -> dict[str, Any]:
    """Per workspace and per key totals, with cost, from ``AccountStore.usage`` rows."""
    workspaces: dict[str, dict[str, Any]] = {}
    for row in rows:
        ws = workspaces.setdefault(row["workspace"], {"plan": row["plan"], **_zero(), "keys": {}})
        key = ws["keys"].setdefault(row["key_id"], _zero())
        for target in (ws, key):
            target["bytes_in"] += row["bytes_in"]
            target["bytes_out"] += row["bytes_out"]
            target[f"{row['role']}_minutes"] += row["connection_seconds"] / 60
            # Each step passes a trainer and a simulator: taken by the one, served by the other.
            target["steps" if row["role"] == "trainer" else "steps_served"] += row["steps"]
    for ws in workspaces.values():
        minutes = ws["trainer_minutes"] + ws["simulator_minutes"]
        ws["cost"] = round(prices.cost(ws["plan"], ws["bytes_in"] + ws["bytes_out"], minutes * 60), 6)
        ws["included_bytes"] = prices.included_bytes(ws["plan"])
    return {"currency": prices.currency, "workspaces": workspaces}

"""One accounts store for every relay replica and region: a named actor on the head node.

The relay core's accounts backend (``remoterl_ray.relay.accounting``) is a
protocol; here it is met by :class:`RayAccounts`, which forwards each call to
the one :class:`AccountsActor`. The actor owns the SQLite file on the head
node (never scaled away), so ``remoterl keys ...`` run on the head node edits
the very store the relays read. Replicas cache key lookups for a minute and
poll the shared state once a second, so the actor sees about one call per
replica per second, not one per frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray

from remoterl_ray.accounts.store import AccountsState, AccountStore, Identity, UsageDelta

from .state import HEAD_NODE_RESOURCE, STATE_NAMESPACE

ACCOUNTS_ACTOR = "remoterl-accounts"


@ray.remote(num_cpus=0, max_restarts=-1)
class AccountsActor:
    def __init__(self, db_path: str) -> None:
        self.store = AccountStore(db_path)

    def path(self) -> str:
        return str(self.store.path)

    def identify(self, api_key: str) -> tuple[Identity | None, str]:
        return self.store.identify(api_key)

    def record(self, deltas: list[UsageDelta]) -> None:
        self.store.record(deltas)

    def state(self, kicks_after: int) -> AccountsState:
        return self.store.state(kicks_after)

    def act(self, operator: str, action: str, target: str) -> None:
        self.store.act(operator, action, target)

    def audit_log(self, limit: int) -> list[dict[str, Any]]:
        return self.store.audit_log(limit)

    def cookie_secret(self) -> str:
        return self.store.cookie_secret()


def accounts_actor(db_path: str) -> Any:
    """The shared accounts actor; the first replica to ask creates it with its ``db_path``.

    A replica configured with another path fails loudly: two stores would
    split keys and usage between replicas."""
    actor = AccountsActor.options(
        name=ACCOUNTS_ACTOR,
        namespace=STATE_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        resources={HEAD_NODE_RESOURCE: 0.001},
    ).remote(db_path)
    in_use = ray.get(actor.path.remote(), timeout=120)
    if Path(in_use) != Path(db_path).expanduser():
        raise ValueError(
            f"the cluster's accounts store is {in_use}, this relay was configured with {db_path}: "
            "every region and replica must use the same settings.db (or remove the actor to move it)"
        )
    return actor


class RayAccounts:
    """The relay's accounts backend inside a Serve replica."""

    def __init__(self, db_path: str) -> None:
        self._actor = accounts_actor(db_path)

    async def identify(self, api_key: str) -> tuple[Identity | None, str]:
        return await self._actor.identify.remote(api_key)

    async def record(self, deltas: list[UsageDelta]) -> None:
        if deltas:
            await self._actor.record.remote(deltas)

    async def state(self, kicks_after: int) -> AccountsState:
        return await self._actor.state.remote(kicks_after)

    async def act(self, operator: str, action: str, target: str) -> None:
        await self._actor.act.remote(operator, action, target)

    async def audit_log(self, limit: int) -> list[dict[str, Any]]:
        return await self._actor.audit_log.remote(limit)

    async def cookie_secret(self) -> str:
        return await self._actor.cookie_secret.remote()

    async def close(self) -> None:
        return None

"""Which modules a simulator may import on a trainer's behalf.

A trainer can mirror ``gym.register(id, entry_point="module:attr")`` and can
ask for ids of the form ``"module:Env-v0"`` (which Gymnasium resolves by
importing ``module``). Both would import code named by a remote peer, so the
simulator does it only for modules its operator listed. Ids already in the
simulator's own Gymnasium registry are always allowed: they were put there by
code the operator runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from ..protocol.errors import RegistrationRefusedError

ENV_VAR = "REMOTERL_ALLOW_MODULES"


def allowed_modules_from_env() -> list[str]:
    raw = os.environ.get(ENV_VAR, "")
    return [m.strip() for m in raw.split(",") if m.strip()]


class Allowlist:
    def __init__(self, modules: Iterable[str] = ()) -> None:
        self.modules = tuple(sorted({m.strip() for m in modules if m and m.strip()}))

    def allows(self, module: str) -> bool:
        return any(module == m or module.startswith(m + ".") for m in self.modules)

    def check(self, module: str, *, what: str) -> None:
        if not self.allows(module):
            listed = ", ".join(self.modules) or "none"
            raise RegistrationRefusedError(
                f"{what} needs module {module!r}, which is not on this simulator's allowlist "
                f"(allowed: {listed}); start the simulator with --allow {module} "
                f"or {ENV_VAR}={module}"
            )

    def check_entry_point(self, entry_point: object) -> str:
        """Validate a mirrored entry point; returns its module name."""
        if not isinstance(entry_point, str) or ":" not in entry_point:
            raise RegistrationRefusedError(
                f"entry point must be a 'module:attr' string, got {entry_point!r:.100}"
            )
        module, _, attr = entry_point.partition(":")
        if not module or not attr or not all(part.isidentifier() for part in module.split(".")):
            raise RegistrationRefusedError(f"malformed entry point {entry_point!r:.100}")
        self.check(module, what=f"entry point {entry_point!r}")
        return module

    def check_env_id(self, env_id: str) -> None:
        """Gymnasium imports ``module`` for ids written ``module:Env-v0``."""
        if ":" in env_id:
            self.check(env_id.split(":", 1)[0], what=f"env id {env_id!r}")

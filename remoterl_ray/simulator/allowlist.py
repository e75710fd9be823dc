"""What a simulator's operator allows trainers to run: the allowlist.

Two kinds of entry, from ``--allow`` (repeatable), ``REMOTERL_ALLOW_MODULES``
(comma separated) and ``init(role="simulator", allow_modules=[...])``:

- ``pkg``: importing ``pkg`` and its submodules; the ``gymnasium.Env``
  subclasses found there as entry points and RLlib creators; ids written
  ``pkg:Env-v0`` (Gymnasium imports ``pkg`` for those).
- ``pkg.mod:name``: that one function (or env class) as an entry point or
  creator, and importing ``pkg.mod`` to reach it. Nothing else in ``pkg.mod``.

Functions need naming because a module's functions are arbitrary code (an env
package re-exports ``gymnasium.register``, for one); an env class is what a
module allowed for its envs is expected to offer. Ids already in the
simulator's own Gymnasium registry need no entry: the operator's code put them
there. How an entry point is checked lives in ``entry_points``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from ..protocol.errors import RegistrationRefusedError

ENV_VAR = "REMOTERL_ALLOW_MODULES"


def allowed_modules_from_env() -> list[str]:
    raw = os.environ.get(ENV_VAR, "")
    return [m.strip() for m in raw.split(",") if m.strip()]


def is_module_name(name: str) -> bool:
    """A dotted name of identifiers: ``pkg`` or ``pkg.sub.mod``."""
    return bool(name) and all(part.isidentifier() for part in name.split("."))


def split_target(target: str) -> tuple[str, str] | None:
    """``"pkg.mod:name"`` as ``("pkg.mod", "name")``; None if malformed."""
    module, sep, attr = target.partition(":")
    if not sep or not is_module_name(module) or not attr.isidentifier():
        return None
    return module, attr


def _parse(entry: str) -> str | tuple[str, str]:
    entry = entry.strip()
    if ":" in entry:
        target = split_target(entry)
        if target is not None:
            return target
    elif is_module_name(entry):
        return entry
    raise ValueError(
        f"--allow {entry!r} is not an allowlist entry: write a module ('my_pkg', 'my_pkg.envs') "
        "or one function ('my_pkg.envs:make_env')"
    )


class Allowlist:
    """Module entries and named ``module:name`` entries; see the module docstring."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        parsed = [_parse(e) for e in entries if e and e.strip()]
        self.modules = tuple(sorted({p for p in parsed if isinstance(p, str)}))
        self.named = frozenset(p for p in parsed if isinstance(p, tuple))

    def allows_module(self, module: str) -> bool:
        """True if a module entry covers ``module`` (itself or a parent package)."""
        return any(module == m or module.startswith(m + ".") for m in self.modules)

    def names(self, module: str, attr: str) -> bool:
        """True if ``module:attr`` itself is on the allowlist."""
        return (module, attr) in self.named

    def describe(self) -> str:
        entries = [*self.modules, *sorted(f"{m}:{a}" for m, a in self.named)]
        return ", ".join(entries) or "nothing"

    def check_env_id(self, env_id: str) -> None:
        """Gymnasium imports ``module`` for ids written ``module:Env-v0``: only module entries allow that."""
        if ":" not in env_id:
            return
        module = env_id.split(":", 1)[0]
        if not self.allows_module(module):
            raise RegistrationRefusedError(
                f"env id {env_id!r} makes Gymnasium import module {module!r}, which is not on this "
                f"simulator's allowlist (allowed: {self.describe()}); start the simulator with "
                f"--allow {module} or {ENV_VAR}={module}"
            )

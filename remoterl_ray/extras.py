"""What each optional part of remoterl needs, and one clear line when it is missing.

The base install is what a simulator machine and an embedded relay need
(Gymnasium, NumPy, msgpack, websockets, pydantic and the web stack). The
trainer integrations and Ray Serve come with extras: ``[sb3]``, ``[rllib]``,
``[serve]``, ``[all]``. Code that needs one imports it through
:func:`require`, so a missing extra is an ``ImportError`` naming the extra
to install, not a traceback from deep inside an import.
"""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRA_FOR = {
    "ray": "rllib",  # RLlib and Tune; Ray Serve is [serve]
    "stable_baselines3": "sb3",
    "tensorboard": "sb3",  # TensorBoard comes with the trainer extras
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra."""


def require(module: str, what: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` for ``what``; if it is missing, say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.split(".")[0]
        if exc.name is None or exc.name.split(".")[0] != top:
            raise  # something *inside* the installed package is broken: not ours to rename
        extra = extra or EXTRA_FOR.get(top, "all")
        raise MissingExtraError(
            f"{what} needs {top}, which is not installed: pip install 'remoterl-ray[{extra}]'"
        ) from None

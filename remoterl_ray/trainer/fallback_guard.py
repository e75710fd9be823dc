"""After a trainer ``init`` that returned False: no env is built locally unnoticed.

``init`` returns False when the relay is unreachable or no simulator comes
online, and a script that does not check may go on to train on local envs
while its author believes they are remote. With ``strict`` (the default),
``gym.make``/``gym.make_vec`` (and so SB3's ``make_vec_env``, whose
factories call ``gym.make``), RLlib's ``Algorithm`` and Tune's ``Tuner`` then
raise the reason ``init`` failed, with a message saying how to go local on
purpose: ``remoterl.shutdown()`` (or ``init(..., strict=False)``). A later
successful ``init`` or ``shutdown`` lifts the guard.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

from ..protocol.errors import RemoteRLError
from .gym_patch import _ORIGINAL_MAKE, _ORIGINAL_MAKE_VEC, GYM_MODULES
from .import_hooks import when_imported
from .patching import Patcher


def _refusal(error: type[RemoteRLError], reason: str) -> Callable[..., NoReturn]:
    message = (
        f"remoterl.init() returned False ({reason}), so this would run on a LOCAL env, not a remote one. "
        "Start the relay or a simulator and call remoterl.init() again; to use local envs on purpose, "
        "call remoterl.shutdown() first (or pass strict=False to init)"
    )

    def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        raise error(message)

    return refuse


def guard_local_fallback(patcher: Patcher, error: type[RemoteRLError], reason: str) -> None:
    """Make env-building entry points raise ``error`` until ``patcher`` is restored."""
    refuse = _refusal(error, reason)
    patcher.replace(GYM_MODULES, "make", _ORIGINAL_MAKE, refuse)
    patcher.replace(GYM_MODULES, "make_vec", _ORIGINAL_MAKE_VEC, refuse)

    def rllib(_module: object) -> None:
        from ray.rllib.algorithms.algorithm import Algorithm

        patcher.set(Algorithm, "__init__", refuse)

    def tune(_module: object) -> None:
        from ray.tune import Tuner

        patcher.set(Tuner, "__init__", refuse)

    when_imported("ray.rllib.algorithms.algorithm", rllib, patcher)
    when_imported("ray.tune", tune, patcher)

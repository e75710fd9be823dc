"""The one place where a string from a trainer becomes code to run.

A trainer names an env's code as ``"module:attr"`` (a mirrored entry point,
an RLlib creator). The simulator accepts only a ``gymnasium.Env`` subclass
found in a module its allowlist allows, or a function (or env class) that the
allowlist names exactly. The string is checked before anything is imported,
the object after, and nothing is called to find out what it is: otherwise an
allowed module that merely re-exports a function such as
``gymnasium.register`` would let a trainer run anything.

Maps from a trainer (kwargs, env_config) are data for constructors; they may
not carry the keys Gymnasium would load as code.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import gymnasium as gym

from ..protocol.errors import ErrorCode, ProtocolError, RegistrationRefusedError
from .allowlist import ENV_VAR, Allowlist, split_target

# Keys Gymnasium resolves to code (strings it imports, or wrapper specs), and make_vec's callables.
CODE_KEYS = frozenset({"entry_point", "vector_entry_point", "additional_wrappers", "wrappers"})
# make_vec takes these from a spec's kwargs over its own arguments: a registration
# could raise num_envs past the simulator's capacity check, so they stay in the request.
VECTOR_KEYS = frozenset({"num_envs", "vectorization_mode", "vector_kwargs"})

EnvFactory = Callable[..., gym.Env]
_MISSING = object()


def resolve_entry_point(
    allowlist: Allowlist, target: object, *, what: str = "entry point", agents: bool = False
) -> EnvFactory:
    """The env class or named function ``target`` names, or ``RegistrationRefusedError``
    (``agents``: a multi-agent make, where PettingZoo env classes count as env classes too)."""
    if not isinstance(target, str):
        raise RegistrationRefusedError(f"{what} must be a 'module:attr' string, got {target!r:.100}")
    parts = split_target(target)
    if parts is None:
        raise RegistrationRefusedError(
            f"malformed {what} {target!r:.100}: write 'module:attr' (e.g. 'my_pkg.envs:MyEnv')"
        )
    module_name, attr = parts
    named = allowlist.names(module_name, attr)
    if not named and not allowlist.allows_module(module_name):
        raise RegistrationRefusedError(
            f"{what} {target!r} is in module {module_name!r}, which is not on this simulator's allowlist "
            f"(allowed: {allowlist.describe()}). To allow it, start the simulator with --allow {module_name} "
            f"(gymnasium.Env subclasses in it) or --allow {target} (that one env-creator function), "
            f"or add the same to {ENV_VAR}"
        )
    obj = vars(_import(module_name, target, what)).get(attr, _MISSING)  # vars: no module __getattr__ runs
    if is_env_class(obj, agents=agents):
        return obj
    if named and inspect.isfunction(obj):
        return obj
    raise RegistrationRefusedError(_refusal(target, what, obj, named=named, module_name=module_name))


def is_env_class(obj: object, *, agents: bool = False) -> bool:
    """A ``gymnasium.Env`` subclass that can be built from data (a ``Wrapper`` needs an env object);
    with ``agents``, a PettingZoo env class too (if PettingZoo is imported here, as a module
    defining such a class has done)."""
    if not isinstance(obj, type):
        return False
    if issubclass(obj, gym.Env):
        return not issubclass(obj, gym.Wrapper)
    pettingzoo = sys.modules.get("pettingzoo.utils.env") if agents else None
    if pettingzoo is None:
        return False
    wrappers = sys.modules.get("pettingzoo.utils.wrappers")
    if wrappers is not None and issubclass(obj, (wrappers.BaseWrapper, wrappers.BaseParallelWrapper)):
        return False
    return issubclass(obj, (pettingzoo.AECEnv, pettingzoo.ParallelEnv))


def _import(module_name: str, target: str, what: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise RegistrationRefusedError(
            f"{what} {target!r}: module {module_name!r} is allowed but cannot be imported on this simulator ({exc})"
        ) from None


def _refusal(target: str, what: str, obj: object, *, named: bool, module_name: str) -> str:
    if obj is _MISSING:
        return f"{what} {target!r}: module {module_name!r} has no attribute {target.partition(':')[2]!r}"
    if isinstance(obj, type) and issubclass(obj, gym.Wrapper):
        return f"{what} {target!r} is a gymnasium.Wrapper, which needs an env object that cannot travel"
    if inspect.isfunction(obj):
        return (
            f"{what} {target!r} is a function, and functions run only when the allowlist names them "
            f"(a module entry allows its gymnasium.Env subclasses). If it builds an env, start the "
            f"simulator with --allow {target}"
        )
    kind = "a class" if isinstance(obj, type) else f"a {type(obj).__name__}"
    allowed_by = "the allowlist names it" if named else f"module {module_name!r} is allowed"
    return (
        f"{what} {target!r} is {kind}, not a gymnasium.Env subclass or a Python function that builds "
        f"an env, so it is refused although {allowed_by}"
    )


def plain_kwargs(value: object, what: str, *, registration: bool = False) -> dict[str, Any]:
    """``value`` as keyword arguments: a map with string keys, none of which carries code.

    Absent (None) means no arguments. A key in ``CODE_KEYS`` is refused as
    ``register_refused`` in a registration, else as ``bad_payload``; a
    registration may not set ``VECTOR_KEYS`` either.
    """
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ProtocolError(f"{what} must be a map with string keys", code=ErrorCode.BAD_PAYLOAD)
    carried = sorted(CODE_KEYS.intersection(value))
    if carried:
        message = (
            f"{what} may not set {', '.join(carried)}: code is named only by a registration's own "
            "'module:attr' entry point (or a creator's target), which the simulator's allowlist checks"
        )
        raise RegistrationRefusedError(message) if registration else ProtocolError(message, code=ErrorCode.BAD_PAYLOAD)
    vector_keys = sorted(VECTOR_KEYS.intersection(value)) if registration else []
    if vector_keys:
        raise RegistrationRefusedError(
            f"{what} may not set {', '.join(vector_keys)}: pass them to make_vec instead"
        )
    return value

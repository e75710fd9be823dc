"""While a trainer is initialized, Gymnasium's ``make``, ``make_vec`` and
``register`` build remote envs and mirror registrations to simulators.

Code that imported ``make`` by name before ``init`` (``from gymnasium import
make``) keeps the local function: patch targets are module attributes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gymnasium
import gymnasium.envs
import gymnasium.envs.registration as registration
from gymnasium.envs.registration import EnvSpec

from ..protocol import codec
from ..protocol.errors import RegistrationRefusedError, UnsupportedError
from .patching import Patcher
from .remote_env import RemoteEnv
from .remote_vector_env import RemoteVectorEnv
from .session import Registration, TrainerSession
from .specs import VECTOR_KWARGS, made_as
from .targets import importable_name

log = logging.getLogger("remoterl")

GYM_MODULES = (gymnasium, gymnasium.envs, registration)
_ORIGINAL_MAKE = registration.make
_ORIGINAL_MAKE_VEC = registration.make_vec
_ORIGINAL_REGISTER = registration.register


def env_id_of(id: str | EnvSpec) -> str:
    if isinstance(id, EnvSpec):
        return made_as(id)
    if not isinstance(id, str):
        raise TypeError(f"env id must be a string or EnvSpec, got {type(id).__name__}")
    return id


def spec_kwargs(id: str | EnvSpec, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A spec's own kwargs under the call's, as ``make(spec, **kwargs)`` merges them;
    the vector fields ``make_vec`` records in its spec are arguments of their own."""
    if not isinstance(id, EnvSpec):
        return kwargs
    recorded = {k: v for k, v in id.kwargs.items() if k not in VECTOR_KWARGS}
    return {**recorded, **kwargs}


def make_kwargs(
    max_episode_steps: int | None, disable_env_checker: bool | None, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """``gym.make``'s keyword arguments as the simulator's ``gym.make`` takes them."""
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = max_episode_steps
    if disable_env_checker is not None:
        kwargs["disable_env_checker"] = disable_env_checker
    return kwargs


def stays_local(session: TrainerSession, env_id: str) -> bool:
    """True for ids registered here with a callable entry point (warns once)."""
    reason = session.unmirrored.get(env_id)
    if reason is None:
        return False
    if env_id not in _warned:
        _warned.add(env_id)
        log.warning("remoterl: %s", reason)
    return True


_warned: set[str] = set()


def remote_unless_refused(session: TrainerSession, env_id: str, remote: Callable[[], Any], local: Callable[[], Any]) -> Any:
    """``remote()``; but an id registered here with a class or function that the
    simulators' allowlists do not permit is made by ``local()``, with the warning
    callables always had (libraries register and make such envs at import time,
    and an import must not fail because a simulator does not offer their env)."""
    try:
        return remote()
    except RegistrationRefusedError as exc:
        registration = session.registrations.get(env_id)
        if registration is None or not registration.from_object:
            raise
        del session.registrations[env_id]
        session.unmirrored[env_id] = (
            f"{env_id!r} is made locally: its entry point {registration.entry_point!r} was registered here "
            f"as a class or function, and the simulators refused it ({exc.message})"
        )
        stays_local(session, env_id)
        return local()


def patch_gymnasium(session: TrainerSession, patcher: Patcher) -> None:
    def make(
        id: str | EnvSpec, max_episode_steps: int | None = None, disable_env_checker: bool | None = None, **kwargs: Any
    ) -> Any:
        if stays_local(session, env_id_of(id)):
            return _ORIGINAL_MAKE(id, max_episode_steps, disable_env_checker, **kwargs)
        if isinstance(id, EnvSpec) and max_episode_steps is None:
            max_episode_steps = id.max_episode_steps  # make(spec) honours the spec's, as locally
        merged = make_kwargs(max_episode_steps, disable_env_checker, spec_kwargs(id, kwargs))
        return remote_unless_refused(
            session,
            env_id_of(id),
            lambda: RemoteEnv(session, env_id_of(id), **merged),
            lambda: _ORIGINAL_MAKE(env_id_of(id), **merged),  # by the trainer's own id and registry
        )

    def make_vec(
        id: str | EnvSpec,
        num_envs: int = 1,
        vectorization_mode: Any = None,
        vector_kwargs: dict[str, Any] | None = None,
        wrappers: Any = None,
        **kwargs: Any,
    ) -> Any:
        if stays_local(session, env_id_of(id)):
            return _ORIGINAL_MAKE_VEC(id, num_envs, vectorization_mode, vector_kwargs, wrappers, **kwargs)
        if wrappers:
            raise UnsupportedError(
                "make_vec(wrappers=...) takes callables, which cannot be sent to a simulator; "
                "wrap the returned vector env with Gymnasium's vector wrappers instead"
            )
        return remote_unless_refused(
            session,
            env_id_of(id),
            lambda: RemoteVectorEnv(
                session,
                env_id_of(id),
                num_envs,
                vectorization_mode=vectorization_mode,
                vector_kwargs=vector_kwargs,
                **spec_kwargs(id, kwargs),
            ),
            lambda: _ORIGINAL_MAKE_VEC(
                env_id_of(id), num_envs, vectorization_mode, vector_kwargs, wrappers, **spec_kwargs(id, kwargs)
            ),
        )

    def register(
        id: str,
        entry_point: Any = None,
        reward_threshold: float | None = None,
        nondeterministic: bool = False,
        max_episode_steps: int | None = None,
        order_enforce: bool = True,
        disable_env_checker: bool = False,
        additional_wrappers: tuple[Any, ...] = (),
        vector_entry_point: Any = None,
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        refusal = None
        mirrored = entry_point
        if entry_point is not None and not isinstance(entry_point, str):
            # A class or function simulators can import travels by its name, for
            # their allowlist to judge as it judges 'module:attr' strings.
            mirrored = importable_name(entry_point)
        if entry_point is not None and mirrored is None:
            # Libraries register (and even make) such envs at import time: they
            # stay local, with a warning that says how to make them remote.
            refusal = (
                f"gym.register({id!r}, entry_point={entry_point!r}) is not mirrored to simulators, "
                f"so {id!r} is made locally: simulators cannot import this callable (a lambda, a nested "
                "function or something defined in __main__ is code, and code never travels). Define it at "
                "module level in a module the simulators can import, or pass it as a 'module:attr' string, "
                "and allow it on the simulators: "
                "entry_point='my_pkg.envs:MyEnv' (a gymnasium.Env subclass) needs --allow my_pkg; "
                "entry_point='my_pkg.envs:make_env' (a function) needs --allow my_pkg.envs:make_env"
            )
        spec = {
            "reward_threshold": reward_threshold,
            "nondeterministic": nondeterministic,
            "max_episode_steps": max_episode_steps,
            "order_enforce": order_enforce,
            "disable_env_checker": disable_env_checker,
        }
        if entry_point is not None and refusal is None:
            codec.packb(kwargs or {})  # refuse unsendable kwargs now, not at make time
        _ORIGINAL_REGISTER(
            id,
            entry_point=entry_point,
            additional_wrappers=additional_wrappers,
            vector_entry_point=vector_entry_point,
            kwargs=kwargs,
            **spec,
        )
        if refusal is not None:
            session.unmirrored[id] = refusal
        elif entry_point is not None:
            session.unmirrored.pop(id, None)
            session.registrations[id] = Registration(
                id, mirrored, dict(kwargs or {}), spec, from_object=not isinstance(entry_point, str)
            )

    patcher.replace(GYM_MODULES, "make", _ORIGINAL_MAKE, make)
    patcher.replace(GYM_MODULES, "make_vec", _ORIGINAL_MAKE_VEC, make_vec)
    patcher.replace(GYM_MODULES, "register", _ORIGINAL_REGISTER, register)

"""While a trainer is initialized, SB3's ``DummyVecEnv`` and ``SubprocVecEnv``
(and so ``make_vec_env``) build remote vector envs.

The env factories run as usual, except that ``gym.make`` inside them returns a
``DeferredEnv``: the id and kwargs, with spaces from the simulator's
description. If every factory made the same env and wrapped it in nothing
but SB3's ``Monitor`` (what ``make_vec_env`` does), all envs become one
``RemoteVectorEnv`` stepped as a batch. Otherwise (other wrappers, envs made
without ``gym.make``) the factories' envs are kept as they are in a plain
``DummyVecEnv``, each deferred env becoming its own remote env on first use.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import gymnasium as gym
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from ..protocol import codec
from ..trainer.gym_patch import GYM_MODULES, env_id_of, make_kwargs, remote_unless_refused, stays_local
from ..trainer.patching import Patcher
from ..trainer.remote_env import RemoteEnv
from ..trainer.remote_vector_env import RemoteVectorEnv
from ..trainer.session import TrainerSession
from ..trainer.specs import remote_spec
from .vec_env import RemoteVecEnv, Slot

log = logging.getLogger("remoterl.sb3")


class DeferredEnv(gym.Env):
    """What ``gym.make`` returns inside an SB3 env factory: a remote env that
    is only created if something steps it on its own."""

    def __init__(self, session: TrainerSession, env_id: str, kwargs: dict[str, Any]) -> None:
        self.session = session
        self.env_id = env_id
        self.kwargs = kwargs
        description = session.describe(env_id, kwargs)
        self.observation_space = description.observation_space
        self.action_space = description.action_space
        self.metadata = dict(description.metadata)
        self.render_mode = description.render_mode
        self.spec = remote_spec(description.spec, env_id, kwargs)
        self._env: RemoteEnv | None = None

    @property
    def key(self) -> tuple[str, bytes]:
        return self.env_id, codec.packb(self.kwargs)

    @property
    def remote(self) -> RemoteEnv:
        if self._env is None:
            self._env = RemoteEnv(self.session, self.env_id, **self.kwargs)
        return self._env

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        return self.remote.reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        return self.remote.step(action)

    def render(self) -> Any:
        return self.remote.render()

    def close(self) -> None:
        if self._env is not None:
            self._env.close()


class PrebuiltDummyVecEnv(DummyVecEnv):
    """A ``DummyVecEnv`` over envs the factories already made. Python calls
    ``__init__`` again, with the original factories, on whatever a patched
    ``__new__`` returns; this one ignores that second call."""

    def __init__(self, env_fns: list[Callable[[], gym.Env]], *args: Any, **kwargs: Any) -> None:
        if getattr(self, "_built", False):
            return
        super().__init__(env_fns)
        self._built = True


@contextmanager
def deferred_make(session: TrainerSession) -> Iterator[None]:
    """``gym.make`` returns ``DeferredEnv``s inside this block."""

    saved = [(module, module.make) for module in GYM_MODULES]
    trainer_make = saved[0][1]

    def make(
        id: Any, max_episode_steps: int | None = None, disable_env_checker: bool | None = None, **kwargs: Any
    ) -> gym.Env:
        if stays_local(session, env_id_of(id)):  # registered here with a callable: a local env
            return trainer_make(id, max_episode_steps, disable_env_checker, **kwargs)
        return remote_unless_refused(
            session,
            env_id_of(id),
            lambda: DeferredEnv(session, env_id_of(id), make_kwargs(max_episode_steps, disable_env_checker, kwargs)),
            lambda: trainer_make(id, max_episode_steps, disable_env_checker, **kwargs),
        )

    for module, _ in saved:
        module.make = make
    try:
        yield
    finally:
        for module, original in saved:
            module.make = original


def _batchable(env: gym.Env) -> tuple[DeferredEnv, Monitor | None] | None:
    """The deferred env under ``env`` if ``env`` is one, or a Monitor around one."""
    if isinstance(env, DeferredEnv):
        return env, None
    if type(env) is Monitor and isinstance(env.env, DeferredEnv):
        return env.env, env
    return None


def build_vec_env(session: TrainerSession, env_fns: list[Callable[[], gym.Env]]) -> VecEnv:
    if not env_fns:
        raise ValueError("a VecEnv needs at least one env factory")
    with deferred_make(session):
        envs = [fn() for fn in env_fns]
    plans = [_batchable(env) for env in envs]
    if all(plans) and len({plan[0].key for plan in plans}) == 1:  # type: ignore[index]
        first = plans[0][0]  # type: ignore[index]
        venv = RemoteVectorEnv(
            session,
            first.env_id,
            len(envs),
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": "SameStep"},
            per_env_infos=True,
            **first.kwargs,
        )
        stacks: list[gym.Env] = []
        slots: list[Slot] = []
        for deferred, monitor in plans:  # type: ignore[misc]
            slot = Slot(
                deferred.observation_space,
                deferred.action_space,
                metadata=deferred.metadata,
                render_mode=deferred.render_mode,
                spec=deferred.spec,
            )
            if monitor is not None:
                monitor.env = slot
            stacks.append(monitor if monitor is not None else slot)
            slots.append(slot)
        return RemoteVecEnv(venv, stacks, slots, action_space=first.action_space)
    log.info(
        "remoterl: these env factories add wrappers other than Monitor (or differ); "
        "their %d envs are remote but stepped one at a time",
        len(envs),
    )
    return PrebuiltDummyVecEnv([lambda env=env: env for env in envs])


def patch_sb3(session: TrainerSession, patcher: Patcher) -> None:
    def __new__(cls: type, env_fns: list[Callable[[], gym.Env]] | None = None, *args: Any, **kwargs: Any) -> Any:
        if cls not in (DummyVecEnv, SubprocVecEnv) or env_fns is None:
            return object.__new__(cls)  # subclasses: their own envs (remote via gym.make) as usual
        if cls is SubprocVecEnv:
            start_method = kwargs.get("start_method", args[0] if args else None)
            if start_method is not None:
                multiprocessing.get_context(start_method)  # an unknown method raises as SB3's own check does
        return build_vec_env(session, list(env_fns))

    for cls in (DummyVecEnv, SubprocVecEnv):
        patcher.set(cls, "__new__", __new__)

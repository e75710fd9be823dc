"""The ``EnvSpec`` a remote env reports: the simulator's, field for field.

Code that reads ``env.spec`` (ids, ``max_episode_steps``, ``kwargs``, entry
points as "module:attr" strings) sees what a local ``gym.make`` would give,
and ``env.spec.make()`` makes the env again remotely, by the id it was first
made with (a ``module:Env-v0`` id keeps its module, which Gymnasium leaves out
of ``spec.id``).
"""

from __future__ import annotations

from typing import Any

from gymnasium.envs.registration import EnvSpec

from ..protocol.descriptions import SpecInfo

REMOTE_ENTRY_POINT = "remoterl_ray.trainer.remote_env:RemoteEnv"  # the simulator's entry point was not a string
# Kept on the spec instance, outside its fields, so the spec equals and prints as a local one
# (copies keep it: Gymnasium deep-copies specs).
_MADE_AS = "_remoterl_made_as"


def made_as(spec: EnvSpec) -> str:
    """The id to make ``spec`` by remotely."""
    return getattr(spec, _MADE_AS, None) or spec.id


def remote_spec(info: SpecInfo | None, made_with: str, *, num_envs: int | None = None) -> EnvSpec | None:
    """The trainer-side spec of an env made as ``made_with``; ``num_envs`` for a whole
    vector env (its shards each recorded their own size)."""
    if info is None:
        return None
    kwargs: dict[str, Any] = dict(info.kwargs)
    if num_envs is not None:
        kwargs.pop("num_envs", None)
        if num_envs != 1:
            kwargs["num_envs"] = num_envs
    spec = EnvSpec(
        id=info.id,
        entry_point=info.entry_point or REMOTE_ENTRY_POINT,
        reward_threshold=info.reward_threshold,
        nondeterministic=info.nondeterministic,
        max_episode_steps=info.max_episode_steps,
        order_enforce=info.order_enforce,
        disable_env_checker=info.disable_env_checker,
        kwargs=kwargs,
        vector_entry_point=info.vector_entry_point,
    )
    setattr(spec, _MADE_AS, made_with)
    return spec

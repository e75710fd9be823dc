"""The ``EnvSpec`` a remote env reports: a local one's, built from the trainer's own data.

Code that reads ``env.spec`` (ids, ``max_episode_steps``, ``kwargs``, entry
points) sees what a local ``gym.make`` would give, and ``env.spec.make()``
makes the env again remotely, by the id it was first made with (a
``module:Env-v0`` id keeps its module, which Gymnasium leaves out of
``spec.id``).

A spec is also something a trainer may build an env from locally (after
``shutdown``, or Gymnasium's own ``make(spec)``), so nothing in it that
chooses code or reaches a constructor comes from the simulator: entry points
are the trainer's own registry's (or ``RemoteEnv``'s, for ids only the
simulator knows), and kwargs carry the trainer's own values, under the keys
the simulator's spec recorded. The simulator contributes only plain data
fields (``max_episode_steps``, flags) and the order of keys.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import EnvSpec

from ..protocol.descriptions import SpecInfo

REMOTE_ENTRY_POINT = "remoterl_ray.trainer.remote_env:RemoteEnv"  # an id the trainer's registry does not have
# What make_vec records in a spec's kwargs about the vector env itself, in this order.
VECTOR_KWARGS = ("num_envs", "vectorization_mode", "vector_kwargs")
# Kept on the spec instance, outside its fields, so the spec equals and prints as a local one
# (copies keep it: Gymnasium deep-copies specs).
_MADE_AS = "_remoterl_made_as"


def made_as(spec: EnvSpec) -> str:
    """The id to make ``spec`` by remotely."""
    return getattr(spec, _MADE_AS, None) or spec.id


def remote_spec(
    info: SpecInfo | None,
    made_with: str,
    kwargs: dict[str, Any],
    *,
    vector: dict[str, Any] | None = None,
) -> EnvSpec | None:
    """The trainer-side spec of an env made as ``made_with`` with ``kwargs``;
    ``vector``: the ``num_envs``, ``vectorization_mode`` and ``vector_kwargs`` a
    ``make_vec`` records, for a whole vector env (its shards recorded their own)."""
    if info is None:
        return None
    own = gym.registry.get(info.id)
    values: dict[str, Any] = {**(own.kwargs if own is not None else {}), **kwargs}
    if own is not None and own.max_episode_steps is not None:
        values.setdefault("max_episode_steps", own.max_episode_steps)  # make_vec records it for entry points
    recorded = {key: values[key] for key in info.kwargs if key in values}
    if vector is not None:
        recorded.pop("num_envs", None)
        for key in VECTOR_KWARGS:
            value = vector.get(key)
            if value and not (key == "num_envs" and value == 1):
                recorded[key] = value
    spec = EnvSpec(
        id=info.id,
        entry_point=own.entry_point if own is not None else REMOTE_ENTRY_POINT,
        reward_threshold=info.reward_threshold,
        nondeterministic=info.nondeterministic,
        max_episode_steps=info.max_episode_steps,
        order_enforce=info.order_enforce,
        disable_env_checker=info.disable_env_checker,
        kwargs=recorded,
        vector_entry_point=own.vector_entry_point if own is not None else None,
    )
    setattr(spec, _MADE_AS, made_with)
    return spec

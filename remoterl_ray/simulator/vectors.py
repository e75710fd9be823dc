"""Layer 5: the vector envs a simulator builds for a trainer's ``make_vec``.

A shard is made with Gymnasium's own ``make_vec`` in the mode the trainer
asked for, or in Gymnasium's default when it asked for none (the env's
vector entry point if its spec has one, else ``sync``), so a shard is the
vector env a local ``make_vec`` would have built.

Two things differ from a plain ``make_vec`` call, both so that what one
trainer does leaves no trace for the next:

* Gymnasium's sync and async vector envs write ``autoreset_mode`` into their
  first sub-env's ``metadata``, which is usually the env *class's* dict: a
  later single env of that class, made for another trainer, would report
  it. The simulator gives the vector env a dict of its own and puts the
  class's dict back as it was.
* ``per_env_infos``: a sync shard returns one info dict per env, exactly as
  each env produced it, instead of Gymnasium's batched arrays. Gymnasium
  types a batched info array by the first env that reports the key, so a
  vector env split over simulators must batch its infos in one place, in
  env order: the trainer does, with Gymnasium's own ``_add_info``. And
  Stable-Baselines3's VecEnvs hand each env's info over untouched.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import gymnasium.envs.registration as registration
from gymnasium.envs.registration import EnvSpec
from gymnasium.vector import SyncVectorEnv
from gymnasium.vector.utils import iterate

from ..protocol.errors import ErrorCode, ProtocolError, UnsupportedError

VECTOR_MODES = ("sync", "async", "vector_entry_point")


class PerEnvInfos(SyncVectorEnv):
    """A ``SyncVectorEnv`` whose reset and step return a list of per-env info
    dicts (keys as each env gave them; on an autoreset in SAME_STEP mode also
    ``final_obs`` and ``final_info``, as Gymnasium names them)."""

    _collected: list[dict[str, Any]] | None = None

    def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None) -> tuple[Any, Any]:
        """SB3 resets each env with its own options, so partial resets come before any
        full one: envs not reset yet hold a placeholder observation until they are."""
        self._collected = [{} for _ in range(self.num_envs)]
        if options is not None and "reset_mask" in options and any(obs is None for obs in self._env_obs):
            blank = next(iterate(self.single_observation_space, self._observations))
            self._env_obs = [blank if obs is None else obs for obs in self._env_obs]
        obs, _ = super().reset(seed=seed, options=options)
        return obs, self._collected

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, Any]:
        self._collected = [{} for _ in range(self.num_envs)]
        obs, rewards, terminations, truncations, _ = super().step(actions)
        return obs, rewards, terminations, truncations, self._collected

    def _add_info(self, vector_infos: dict[str, Any], env_info: dict[str, Any], env_num: int) -> dict[str, Any]:
        if self._collected is None:  # not inside reset/step (never, today): Gymnasium's layout
            return super()._add_info(vector_infos, env_info, env_num)
        self._collected[env_num].update(env_info)
        return vector_infos


class _MetadataKeeper:
    """Remembers each sub-env metadata dict as it was before a vector env touched it."""

    def __init__(self) -> None:
        self.before: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}

    def __call__(self, env: gym.Env) -> gym.Env:
        metadata = env.metadata
        if isinstance(metadata, dict) and id(metadata) not in self.before:
            self.before[id(metadata)] = (metadata, dict(metadata))
        return env

    def restore(self, venv: gym.vector.VectorEnv) -> None:
        venv.metadata = dict(venv.metadata)  # the vector env keeps what it wrote, in a dict of its own
        for shared, snapshot in self.before.values():
            shared.clear()
            shared.update(snapshot)


def default_mode(spec: str | EnvSpec) -> str:
    """What ``gym.make_vec`` picks when no mode is given, read from the spec it would
    use (Gymnasium's own lookup: ``module:`` prefixes, unversioned ids)."""
    if isinstance(spec, str):
        spec = registration._find_spec(spec)
    return "vector_entry_point" if spec.vector_entry_point is not None else "sync"


def make_vector(
    spec: str | EnvSpec,
    num_envs: int,
    *,
    mode: str | None,
    kwargs: dict[str, Any],
    vector_kwargs: dict[str, Any],
    per_env_infos: bool,
    allow_processes: bool,
) -> tuple[gym.vector.VectorEnv, str]:
    """The shard's vector env, and the mode it was made in."""
    if mode is None:
        mode = default_mode(spec)
    if mode not in VECTOR_MODES:
        raise ProtocolError(f"unknown vectorization mode {mode!r:.100}", code=ErrorCode.BAD_PAYLOAD)
    if mode == "async" and not allow_processes:
        raise UnsupportedError(
            "this simulator does not start env processes for trainers: ask for "
            "vectorization_mode='sync' (the same results), or start the simulator with --allow-processes"
        )
    if mode == "vector_entry_point":
        return gym.make_vec(spec, num_envs=num_envs, vectorization_mode=mode, vector_kwargs=vector_kwargs, **kwargs), mode
    keeper = _MetadataKeeper()
    venv = gym.make_vec(
        spec, num_envs=num_envs, vectorization_mode=mode, vector_kwargs=vector_kwargs, wrappers=[keeper], **kwargs
    )
    keeper.restore(venv)
    if venv.unwrapped.spec is not None:  # make_vec records its arguments, our metadata keeper included
        venv.unwrapped.spec.kwargs.pop("wrappers", None)
    if per_env_infos:
        answer_infos_per_env(venv)
    return venv, mode


def answer_infos_per_env(venv: gym.vector.VectorEnv) -> bool:
    """Make a plain ``SyncVectorEnv`` answer infos per env (the same object, its
    class swapped: a subclass that adds no state); other vector envs keep
    Gymnasium's batched infos. True if it now answers per env."""
    if type(venv) is SyncVectorEnv:
        venv.__class__ = PerEnvInfos
    return isinstance(venv, PerEnvInfos)


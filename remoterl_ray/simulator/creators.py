"""RLlib-style env creators (``creator(env_config) -> Env``) run on a simulator.

A trainer's ``register_env(name, "module:function")`` reaches the simulator
as that string; the simulator resolves it by the same rules as any entry
point (a function the allowlist names, or a ``gymnasium.Env`` subclass of an
allowed module), and calls it once per sub-env with a ``CreatorContext``: the
env_config dict plus RLlib ``EnvContext``'s fields, so creators written for
RLlib (``config.worker_index``, ``config.vector_index``) run unchanged
without Ray installed here.

The vector env is built as RLlib's ``SingleAgentEnvRunner.make_env`` builds
it locally: the creator registered as an env spec's entry point and vector
entry point, then ``gym.make_vec`` in the trainer's
``gym_env_vectorize_mode``. So ``"sync"`` wraps each env in Gymnasium's
checker and order enforcing and refuses a creator that returns no
``gymnasium.Env``, and ``"vector_entry_point"`` calls the creator once, with
``num_envs`` added to its config, for a creator that returns a vector env.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import EnvSpec

from ..protocol.errors import ErrorCode, ProtocolError
from .allowlist import Allowlist
from .entry_points import plain_kwargs, resolve_entry_point


# The id RLlib registers a creator under before its ``make_vec`` (so envs report it in ``spec.id``).
RLLIB_ENV_ID = "rllib-single-agent-env-v0"


class CreatorContext(dict):
    def __init__(self, env_config: dict[str, Any], *, worker_index: int, num_workers: int, vector_index: int) -> None:
        super().__init__(env_config)
        self.worker_index = worker_index
        self.num_workers = num_workers
        self.vector_index = vector_index
        self.remote = False
        self.recreated_worker = False


def _int(arg: dict[str, Any], key: str) -> int:
    value = arg.get(key, 0)
    if not isinstance(value, int) or value < 0:
        raise ProtocolError(f"creator {key} must be a non-negative integer", code=ErrorCode.BAD_PAYLOAD)
    return value


def creator_ints(arg: dict[str, Any]) -> tuple[int, int]:
    """The creator's ``worker_index`` and ``num_workers``, checked."""
    return _int(arg, "worker_index"), _int(arg, "num_workers")


def _mode(arg: dict[str, Any]) -> str:
    """The trainer's ``gym_env_vectorize_mode``: RLlib's default ``sync`` when
    not given; ``async`` builds the same envs in this process (env processes
    are the simulator operator's to allow, for ids only)."""
    mode = arg.get("vectorization_mode") or "sync"
    if mode not in ("sync", "async", "vector_entry_point"):
        raise ProtocolError(f"unknown vectorization mode {mode!r:.100}", code=ErrorCode.BAD_PAYLOAD)
    return "sync" if mode == "async" else mode


def make_with_creator(
    allowlist: Allowlist, arg: dict[str, Any], *, num_envs: int, first_index: int, vector_kwargs: dict[str, Any]
) -> gym.vector.VectorEnv:
    """The shard's vector env of ``num_envs`` envs from ``arg["target"]``."""
    env_config = plain_kwargs(arg.get("env_config"), "creator env_config")
    creator: Callable[[dict[str, Any]], Any] = resolve_entry_point(allowlist, arg.get("target"), what="env creator")
    worker_index, num_workers = creator_ints(arg)
    if not isinstance(first_index, int) or first_index < 0:
        raise ProtocolError("first_index must be a non-negative integer", code=ErrorCode.BAD_PAYLOAD)
    mode = _mode(arg)

    def context(config: dict[str, Any], vector_index: int) -> CreatorContext:
        return CreatorContext(config, worker_index=worker_index, num_workers=num_workers, vector_index=vector_index)

    # make_vec calls the entry point once per sub-env, in order: each gets its own vector_index.
    contexts = iter([context(env_config, first_index + i) for i in range(num_envs)])
    spec = EnvSpec(
        RLLIB_ENV_ID,
        entry_point=lambda: creator(next(contexts)),
        vector_entry_point=lambda num_envs: creator(context({**env_config, "num_envs": num_envs}, first_index)),
    )
    env = gym.make_vec(spec, num_envs=num_envs, vectorization_mode=mode, vector_kwargs=vector_kwargs)
    if not isinstance(env, gym.vector.VectorEnv) or env.num_envs != num_envs:
        made = f"{type(env).__name__} of {getattr(env, 'num_envs', 1)} envs"
        try:
            env.close()
        except Exception:  # the refusal below is what the trainer needs to hear
            pass
        raise TypeError(
            f"env creator {arg.get('target')!r:.200} returned a {made} for vectorization_mode={mode!r}, "
            f"not a gymnasium.vector.VectorEnv of num_envs={num_envs}"
        )
    return env

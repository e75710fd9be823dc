"""RLlib-style env creators (``creator(env_config) -> Env``) run on a simulator.

A trainer's ``register_env(name, "module:function")`` reaches the simulator
as that string; the simulator resolves it by the same rules as any entry
point (a function the allowlist names, or a ``gymnasium.Env`` subclass of an
allowed module), and calls it once per sub-env with a ``CreatorContext``: the
env_config dict plus RLlib ``EnvContext``'s fields, so creators written for
RLlib (``config.worker_index``, ``config.vector_index``) run unchanged
without Ray installed here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym

from ..protocol.errors import ErrorCode, ProtocolError
from .allowlist import Allowlist
from .entry_points import plain_kwargs, resolve_entry_point


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


def make_with_creator(
    allowlist: Allowlist, arg: dict[str, Any], *, num_envs: int, first_index: int, vector_kwargs: dict[str, Any]
) -> gym.vector.VectorEnv:
    """A ``SyncVectorEnv`` of ``num_envs`` envs from ``arg["target"]``."""
    env_config = plain_kwargs(arg.get("env_config"), "creator env_config")
    creator: Callable[[dict[str, Any]], gym.Env] = resolve_entry_point(
        allowlist, arg.get("target"), what="env creator"
    )
    worker_index, num_workers = _int(arg, "worker_index"), _int(arg, "num_workers")
    if not isinstance(first_index, int) or first_index < 0:
        raise ProtocolError("first_index must be a non-negative integer", code=ErrorCode.BAD_PAYLOAD)

    def factory(vector_index: int) -> Callable[[], gym.Env]:
        context = CreatorContext(
            env_config, worker_index=worker_index, num_workers=num_workers, vector_index=vector_index
        )
        return lambda: creator(context)

    return gym.vector.SyncVectorEnv([factory(first_index + i) for i in range(num_envs)], **vector_kwargs)

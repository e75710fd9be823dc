"""Check what a simulator answered before the env classes use it.

A simulator is another party: its answer to a reset or step must have the
shape Gymnasium's API promises (and, for a vector shard, one entry per env of
that shard), or the trainer raises one coded ``bad_payload`` error naming
what was wrong, instead of a bare ``ValueError`` from unpacking or a huge
allocation when shards are joined.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..protocol.descriptions import EnvDescription
from ..protocol.errors import ErrorCode, ProtocolError
from ..protocol.spaces import space_bytes

_SCALARS = (bool, int, float, np.bool_, np.number)


def malformed(what: str) -> ProtocolError:
    return ProtocolError(f"simulator sent a malformed answer: {what}", code=ErrorCode.BAD_PAYLOAD)


def _items(value: Any, count: int, op: str) -> list[Any]:
    if not isinstance(value, list) or len(value) != count:
        raise malformed(f"{op} must answer a list of {count} items, got {type(value).__name__}")
    if not isinstance(value[-1], dict):
        raise malformed(f"{op} info must be a map, got {type(value[-1]).__name__}")
    return value


def reset_answer(value: Any) -> tuple[Any, dict[str, Any]]:
    obs, info = _items(value, 2, "reset")
    return obs, info


def step_answer(value: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
    obs, reward, terminated, truncated, info = _items(value, 5, "step")
    for name, item in (("reward", reward), ("terminated", terminated), ("truncated", truncated)):
        if not isinstance(item, _SCALARS):
            raise malformed(f"step {name} must be a number, got {type(item).__name__}")
    return obs, reward, terminated, truncated, info


def vector_reset_answer(value: Any, envs: int) -> tuple[Any, dict[str, Any]]:
    obs, info = reset_answer(value)
    check_vector_info(info, envs)
    return obs, info


def vector_step_answer(value: Any, envs: int) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """One shard's step: rewards, terminations and truncations hold one entry per env of the shard."""
    obs, rewards, terminations, truncations, info = _items(value, 5, "step")
    for name, item in (("rewards", rewards), ("terminations", terminations), ("truncations", truncations)):
        if not isinstance(item, np.ndarray) or item.shape != (envs,) or item.dtype.kind not in "biuf":
            shape = getattr(item, "shape", type(item).__name__)
            raise malformed(f"step {name} must be a numeric array of shape ({envs},), got {shape}")
    check_vector_info(info, envs)
    return obs, rewards, terminations, truncations, info


def per_env_infos_answer(value: Any, items: int, envs: int) -> list[Any]:
    """A shard's reset (2 items) or step (5) whose info is a list of one map per env."""
    if not isinstance(value, list) or len(value) != items:
        raise malformed(f"answer must be a list of {items} items, got {type(value).__name__}")
    infos = value[-1]
    if not isinstance(infos, list) or len(infos) != envs or not all(isinstance(i, dict) for i in infos):
        raise malformed(f"per-env infos must be a list of {envs} maps")
    if items == 5:
        vector_step_answer([*value[:4], {}], envs)  # rewards, terminations, truncations: one per env
    return value


def attribute_answer(value: Any, envs: int | None) -> list[Any] | tuple[Any, ...]:
    """A shard's per-env answer to an attribute request (``envs`` None: any length)."""
    if not isinstance(value, (list, tuple)) or (envs is not None and len(value) != envs):
        raise malformed(f"attribute answer must be a list of {envs} values, got {type(value).__name__}")
    return value


def check_vector_info(info: dict[str, Any], envs: int, where: str = "info") -> None:
    """Gymnasium's batched info layout for ``envs`` envs: string keys, and for every
    key with a ``_key`` mask, a boolean mask and a value (an array, or a map of
    the same layout) with one row per env. What SB3 and RLlib unpack per env."""
    for key, value in info.items():
        if not isinstance(key, str):
            raise malformed(f"{where} keys must be strings, got {type(key).__name__}")
        mask = info.get("_" + key)
        if mask is None or key.startswith("_"):
            continue
        if not isinstance(mask, np.ndarray) or mask.dtype.kind != "b" or mask.shape != (envs,):
            raise malformed(f"{where} mask _{key} must be booleans of shape ({envs},)")
        if isinstance(value, dict):
            check_vector_info(value, envs, f"{where}[{key!r}]")
        elif not isinstance(value, np.ndarray) or value.shape[:1] != (envs,):
            raise malformed(f"{where}[{key!r}] must have one row per env ({envs}), got {np.shape(value)}")


def check_batch(description: EnvDescription, num_envs: int, max_space_bytes: int) -> None:
    """A vector env batches its spaces, a copy per env: that too within the trainer's budget."""
    need = (space_bytes(description.observation_space) + space_bytes(description.action_space)) * num_envs
    if need > max_space_bytes:
        raise malformed(
            f"the spaces of {num_envs} envs need {need} bytes, more than max_space_bytes ({max_space_bytes}); "
            "raise it if these spaces are real"
        )

"""Split batched actions into per-simulator shards and join shard results back.

A remote vector env of N envs is hosted as contiguous shards [a, b), one per
simulator. Batched values follow Gymnasium's ``batch_space`` layout: arrays
with a leading env axis for fundamental spaces, dicts/tuples of batches for
Dict/Tuple spaces, and tuples of items for the rest (Text, Sequence, OneOf).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gymnasium import spaces

from ..protocol.errors import ErrorCode, ProtocolError

_ARRAY_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
MAX_INFO_FILL = 1 << 22  # elements made up for envs whose shards lack an info key (what others sent bounds the rest)


def slice_batch(space: spaces.Space, batch: Any, start: int, stop: int) -> Any:
    """``batch[start:stop]`` along the env axis, for a batch of ``space`` samples."""
    if isinstance(space, _ARRAY_SPACES):
        return np.asarray(batch)[start:stop]
    if isinstance(space, spaces.Dict):
        return {key: slice_batch(sub, batch[key], start, stop) for key, sub in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(slice_batch(sub, part, start, stop) for sub, part in zip(space.spaces, batch))
    return tuple(batch[start:stop])


def concat_batches(space: spaces.Space, parts: list[Any]) -> Any:
    """Join shard batches of ``space`` samples in shard order."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(space, _ARRAY_SPACES):
        return np.concatenate(parts, axis=0)
    if isinstance(space, spaces.Dict):
        return {key: concat_batches(sub, [p[key] for p in parts]) for key, sub in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(concat_batches(sub, [p[i] for p in parts]) for i, sub in enumerate(space.spaces))
    return tuple(item for part in parts for item in part)


def concat_arrays(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


def merge_infos(infos: list[dict[str, Any]], sizes: list[int]) -> dict[str, Any]:
    """Join shard info dicts (Gymnasium's ``key`` + ``_key`` mask layout).

    A key that only some shards report gets the same filler Gymnasium's own
    ``VectorEnv._add_info`` uses for envs without it: zeros for numeric
    arrays, None for object arrays, and a False mask.
    """
    if len(infos) == 1:
        return infos[0]
    total = sum(sizes)
    offsets = np.cumsum([0, *sizes])
    keys: dict[str, None] = {}  # every shard's keys, in first-seen order (a dict: linear, not quadratic)
    for info in infos:
        keys.update(dict.fromkeys(info))
    out: dict[str, Any] = {}
    for key in keys:
        present = [(i, info[key]) for i, info in enumerate(infos) if key in info]
        if all(isinstance(v, dict) for _, v in present):
            out[key] = merge_infos([info.get(key, {}) for info in infos], sizes)
            continue
        sample = present[0][1]
        if not isinstance(sample, np.ndarray) or sample.ndim == 0:
            out[key] = sample  # not in the batched layout: keep the first shard's value
            continue
        for i, value in present:  # checked before allocating: no shard may size the whole batch
            if not isinstance(value, np.ndarray) or value.shape != (sizes[i], *sample.shape[1:]):
                raise ProtocolError(
                    f"info {key!r} of a shard of {sizes[i]} envs has shape {np.shape(value)}",
                    code=ErrorCode.BAD_PAYLOAD,
                )
        missing = total - sum(sizes[i] for i, _ in present)
        if missing * math.prod(sample.shape[1:]) > MAX_INFO_FILL:  # filler for envs whose shards sent nothing
            raise ProtocolError(
                f"info {key!r} of shape {sample.shape[1:]} per env, from some shards only, would need "
                f"filling for {missing} envs: more than {MAX_INFO_FILL} elements",
                code=ErrorCode.BAD_PAYLOAD,
            )
        if sample.dtype == object:
            merged = np.full((total, *sample.shape[1:]), None, dtype=object)
        else:
            merged = np.zeros((total, *sample.shape[1:]), dtype=sample.dtype)
        for i, value in present:
            merged[offsets[i] : offsets[i + 1]] = value
        out[key] = merged
    return out


def unbatch_infos(infos: dict[str, Any], num_envs: int) -> list[dict[str, Any]]:
    """Gymnasium's batched info dict as one dict per env (keys whose mask is set)."""
    out: list[dict[str, Any]] = [{} for _ in range(num_envs)]
    for key, value in infos.items():
        if key.startswith("_"):
            continue
        mask = infos.get("_" + key)
        if mask is None:
            continue
        per_env = unbatch_infos(value, num_envs) if isinstance(value, dict) else value
        for i in np.flatnonzero(mask):
            out[i][key] = per_env[i]
    return out


def check_per_env_fill(each: list[dict[str, Any]], num_envs: int) -> None:
    """Bound what batching per-env infos allocates beyond what the envs sent.

    Gymnasium's ``_add_info`` gives every key an array for all ``num_envs``
    envs, shaped by the first env that reports it, and a mask: one env's
    1 MiB row in a vector of 2,048 envs would become 2 GiB. The part made up
    for envs that did not send a key may be at most ``MAX_INFO_FILL``
    elements, as when shards' infos are merged (rows counted at their
    largest, masks included). Walks the infos without recursion.
    """
    rows: dict[tuple[Any, ...], int] = {}
    sent = 0
    stack: list[tuple[tuple[Any, ...], dict[str, Any]]] = [((), info) for info in each if info]
    while stack:
        path, info = stack.pop()
        for key, value in info.items():
            where = (*path, key)
            if isinstance(value, dict) and key != "final_obs":
                stack.append((where, value))
                continue
            size = value.size if isinstance(value, np.ndarray) and key != "final_obs" else 1
            sent += size
            rows[where] = max(rows.get(where, 0), size)
    made_up = num_envs * (sum(rows.values()) + len(rows)) - sent
    if made_up > MAX_INFO_FILL:
        raise ProtocolError(
            f"per-env infos would need {made_up} elements made up for envs that did not send them, "
            f"more than {MAX_INFO_FILL}",
            code=ErrorCode.BAD_PAYLOAD,
        )

"""``RemoteVectorEnv``: a real ``gymnasium.vector.VectorEnv`` spread over simulators.

Envs [0, N) are split into contiguous shards, one per simulator; each vector
step sends exactly one frame per shard, all at once, then gathers the
answers as they come. Each shard is a ``SyncVectorEnv`` on its simulator
(unless ``vectorization_mode`` is given), so for the same seeds and actions
the results equal a local ``gym.make_vec(..., vectorization_mode="sync")``,
including Gymnasium's default NEXT_STEP autoreset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space, iterate

from ..protocol.frames import Op
from .answers import check_batch, malformed, vector_reset_answer, vector_step_answer
from .batching import concat_arrays, concat_batches, merge_infos, slice_batch
from .session import TrainerSession
from .remote_env import RECONNECTED
from .shards import Shards, ShardsRebuilt


class RemoteVectorEnv(VectorEnv):
    def __init__(
        self,
        session: TrainerSession,
        env_id: str,
        num_envs: int,
        *,
        vectorization_mode: str | None = None,
        vector_kwargs: dict[str, Any] | None = None,
        creator: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """``creator`` (RLlib integration): ``{"target": "module:function",
        "env_config": ..., "worker_index": ..., "num_workers": ...}`` makes the
        simulators build each env as ``function(env_context)`` instead of
        ``gym.make(env_id, **kwargs)``."""
        if num_envs < 1:
            raise ValueError(f"num_envs must be at least 1, got {num_envs}")
        make_arg = {"kwargs": kwargs, "vectorization_mode": vectorization_mode, "vector_kwargs": vector_kwargs or {}}
        if creator is not None:
            make_arg["creator"] = creator
        self._remote = Shards(session, env_id, num_envs, make_arg, vector=True)
        description = self._remote.description
        self.num_envs = num_envs
        self.single_observation_space = self._remote.observation_space
        self.single_action_space = self._remote.action_space
        check_batch(description, num_envs, session.settings.max_space_bytes)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.metadata = dict(description.metadata)
        self.metadata.setdefault("autoreset_mode", AutoresetMode.NEXT_STEP)
        if isinstance(self.metadata["autoreset_mode"], str):
            self.metadata["autoreset_mode"] = AutoresetMode(self.metadata["autoreset_mode"])
        self.render_mode = description.render_mode
        self.spec = self._remote.spec()
        self._autoreset_step: tuple[Any, dict[str, Any]] | None = None  # see _truncated_by_reconnect

    @property
    def shard_sizes(self) -> list[int]:
        return list(self._remote.sizes)

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        bounds = self._remote.bounds
        if len(bounds) == 1:
            seeds: list[Any] = [seed]
        elif seed is None:
            seeds = [None] * len(bounds)
        elif isinstance(seed, (int, np.integer)):
            seeds = [[int(seed) + i for i in range(a, b)] for a, b in bounds]
        else:
            if len(seed) != self.num_envs:
                raise ValueError(f"expected {self.num_envs} seeds, got {len(seed)}")
            seeds = [list(seed[a:b]) for a, b in bounds]
        shard_options = [self._shard_options(options, a, b) for a, b in bounds]
        if isinstance(seed, (int, np.integer)):
            super().reset(seed=int(seed))  # keeps self.np_random as a local vector env has it
        self._autoreset_step = None
        requests = [{"seed": s, "options": o} for s, o in zip(seeds, shard_options)]
        try:
            answers = self._remote.request(Op.RESET, requests)
            results = [vector_reset_answer(a, n) for a, n in zip(answers, self._remote.sizes)]
        except ShardsRebuilt:  # made again, maybe cut into other shards: seeds and masks are re-split
            return self.reset(seed=seed, options=options)
        obs = self._joined(lambda: concat_batches(self.single_observation_space, [r[0] for r in results]))
        return obs, merge_infos([r[1] for r in results], self._remote.sizes)

    def _shard_options(self, options: dict[str, Any] | None, start: int, stop: int) -> dict[str, Any] | None:
        if not options or "reset_mask" not in options or len(self._remote.bounds) == 1:
            return options
        return {**options, "reset_mask": np.asarray(options["reset_mask"])[start:stop]}

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._autoreset_step is not None:
            obs, info = self._autoreset_step
            self._autoreset_step = None
            zeros = np.zeros(self.num_envs, dtype=bool)
            return obs, np.zeros(self.num_envs), zeros, zeros.copy(), info
        if self._remote.needs_reset:
            return self._truncated_by_reconnect()
        bounds = self._remote.bounds
        if len(bounds) == 1:
            parts = [actions]
        else:
            parts = [slice_batch(self.single_action_space, actions, a, b) for a, b in bounds]
        try:
            answers = self._remote.request(Op.STEP, parts)
        except ShardsRebuilt:
            return self._truncated_by_reconnect()
        results = [vector_step_answer(a, n) for a, n in zip(answers, self._remote.sizes)]
        obs = self._joined(lambda: concat_batches(self.single_observation_space, [r[0] for r in results]))
        rewards = concat_arrays([r[1] for r in results])
        terminations = concat_arrays([r[2] for r in results])
        truncations = concat_arrays([r[3] for r in results])
        infos = merge_infos([r[4] for r in results], self._remote.sizes)
        return obs, rewards, terminations, truncations, infos

    @staticmethod
    def _joined(join: Callable[[], Any]) -> Any:
        """Shards' observations joined; shards that disagree are a malformed answer."""
        try:
            return join()
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise malformed(f"shard observations do not join into one batch: {exc}") from None

    def _truncated_by_reconnect(self) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Every env was made again on a new relay connection: report all episodes
        truncated, in the vector env's own autoreset convention."""
        obs, reset_info = self.reset()
        mode = self.metadata["autoreset_mode"]
        # SAME_STEP returns the new episodes' reset infos with this step, as SyncVectorEnv does.
        infos: dict[str, Any] = dict(reset_info) if mode == AutoresetMode.SAME_STEP else {}
        for i, env_obs in enumerate(iterate(self.observation_space, obs)):
            extra: dict[str, Any] = {RECONNECTED: True}
            if mode == AutoresetMode.SAME_STEP:  # the new episode's first obs stands in for the lost final one
                extra.update(final_obs=env_obs, final_info={})
            infos = self._add_info(infos, extra, i)
        if mode == AutoresetMode.NEXT_STEP:
            self._autoreset_step = (obs, reset_info)  # the next step is the autoreset step: it ignores actions
        done = np.ones(self.num_envs, dtype=bool)
        return obs, np.zeros(self.num_envs), np.zeros(self.num_envs, dtype=bool), done, infos

    def render(self) -> tuple[Any, ...] | None:
        if self._remote.needs_reset:
            self.reset()
        try:
            frames = self._remote.request_all(Op.RENDER)
        except ShardsRebuilt:
            self.reset()
            frames = self._remote.request_all(Op.RENDER)
        if all(f is None for f in frames):
            return None
        return tuple(frame for shard in frames if shard is not None for frame in shard)

    def close_extras(self, **kwargs: Any) -> None:
        remote = getattr(self, "_remote", None)
        if remote is not None:
            remote.close()

    def __repr__(self) -> str:
        return f"<RemoteVectorEnv {self._remote.env_id} num_envs={self.num_envs} shards={self._remote.sizes}>"

"""``RemoteVectorEnv``: a real ``gymnasium.vector.VectorEnv`` spread over simulators.

Envs [0, N) are split into contiguous shards, one per simulator; each vector
step sends exactly one frame per shard, all at once, then gathers the
answers as they come. Each shard is the vector env Gymnasium's ``make_vec``
builds on its simulator in the mode asked for (by default Gymnasium's own
choice: the env's vector entry point if it has one, else ``sync``). A vector
entry point vectorises inside one object (one RNG for all envs, say), so such
a vector env is never split: it lives whole on one simulator. For the same
seeds and actions the results equal a local ``gym.make_vec``.

Where a local vector env would check its arguments before stepping (how many
actions, the reset mask, per-env ``set_attr`` values), a split vector env
checks them here against the whole vector, so the error is the one local
code gets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.error import AlreadyPendingCallError, NoAsyncCallError
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.async_vector_env import AsyncState
from gymnasium.vector.utils import batch_differing_spaces, batch_space, create_empty_array, iterate

from ..protocol.errors import RelayUnavailableError, UnsupportedError
from ..protocol.frames import Op
from ..protocol.space_values import batch_converter, convert_final_obs, sample_converter
from .answers import (
    attribute_answer,
    check_batch,
    malformed,
    per_env_infos_answer,
    vector_reset_answer,
    vector_step_answer,
)
from .batching import check_per_env_fill, concat_arrays, concat_batches, merge_infos, slice_batch, unbatch_infos
from .remote_env import RECONNECTED, make_arg_of
from .session import TrainerSession
from .shards import SKIP, InFlight, Serving, Shards


_ATTR_CALLS = {"call": "call", "get": "get_attr", "set": "set_attr"}  # an attr request's "do", named as the API


def _mode_name(mode: Any) -> str | None:
    """``make_vec``'s mode as its wire string (it takes the enum or its value)."""
    if mode is None:
        return None
    return gym.VectorizeMode(mode).value


def _whole(env_id: str, mode: str | None) -> bool:
    """True when the vector env vectorises inside one object and must not be split."""
    if mode is None:
        spec = gym.registry.get(env_id)  # as Gymnasium would choose, if this process knows the id
        return spec is not None and spec.vector_entry_point is not None
    return mode == "vector_entry_point"


class _InfoBatcher:
    """Gymnasium's own info batching (``VectorEnv._add_info``) for ``num_envs`` envs
    of a vector env: the envs ``recv`` returns."""

    _add_info = VectorEnv._add_info

    def __init__(self, num_envs: int) -> None:
        self.num_envs = num_envs


class RemoteVectorEnv(VectorEnv):
    def __init__(
        self,
        session: TrainerSession,
        env_id: str,
        num_envs: int,
        *,
        vectorization_mode: Any = None,
        vector_kwargs: dict[str, Any] | None = None,
        creator: dict[str, Any] | None = None,
        per_env_infos: bool = False,
        **kwargs: Any,
    ) -> None:
        """``creator`` (RLlib integration): ``{"target": "module:function",
        "env_config": ..., "worker_index": ..., "num_workers": ...}`` makes the
        simulators build each env as ``function(env_context)`` instead of
        ``gym.make(env_id, **kwargs)``. ``per_env_infos`` (SB3 integration):
        reset and step return a list with each env's info as it produced it,
        instead of Gymnasium's batched info dict."""
        if num_envs < 1:
            raise ValueError(f"num_envs must be at least 1, got {num_envs}")
        mode = _mode_name(vectorization_mode)
        vector_kwargs = dict(vector_kwargs or {})
        observation_mode = vector_kwargs.get("observation_mode", "same")
        if not isinstance(observation_mode, str):
            raise UnsupportedError(
                "observation_mode given as spaces cannot be sent to a simulator; use 'same' or 'different'"
            )
        # Sync shards answer each env's info as it was produced: batched here, in env order, a
        # split vector env's infos are typed as a local one's (or handed to SB3 as they are).
        make_arg: dict[str, Any] = {
            **make_arg_of(kwargs),
            "vectorization_mode": mode,
            "vector_kwargs": vector_kwargs,
            "per_env_infos": True,
        }
        if creator is not None:
            make_arg["creator"] = creator
        self.per_env_infos = per_env_infos
        if creator is None:
            whole = _whole(env_id, mode)
        else:  # RLlib's vector entry point calls a creator once for all its envs
            whole = creator.get("vectorization_mode") == "vector_entry_point"
        self._remote = Shards(session, env_id, num_envs, make_arg, vector=True, whole=whole)
        try:
            self._adopt_description(session, num_envs, per_env_infos)
        except BaseException:
            self._remote.close()
            raise
        self._obs_parts: list[Any] = []  # each shard's last observations (a partial reset keeps the others)
        self._autoreset_step: tuple[Any, Any] | None = None  # see _truncated_by_reconnect
        self._state = AsyncState.DEFAULT  # step_async / step_wait, as Gymnasium's AsyncVectorEnv
        self._flight: InFlight | None = None  # the step in flight
        self._ready: tuple[Any, ...] | None = None  # a step's results known without asking (after a reconnect)
        self._pool: InFlight | None = None  # steps sent with send() and not yet received
        self._action_batches: dict[int, gym.Space] = {}  # send(): the action space of n envs, by n

    def _adopt_description(self, session: TrainerSession, num_envs: int, per_env_infos: bool) -> None:
        """Spaces, metadata and spec from what the simulators described."""
        description = self._remote.description
        self.num_envs = num_envs
        self.single_observation_space = self._remote.observation_space
        self.single_action_space = self._remote.action_space
        check_batch(description, num_envs, session.settings.max_space_bytes)
        per_env_spaces = [m.description.observation_spaces for m in self._remote.made]
        if all(spaces is not None for spaces in per_env_spaces):  # observation_mode="different"
            try:
                self.observation_space = batch_differing_spaces([s for spaces in per_env_spaces for s in spaces])
            except (AssertionError, ValueError, TypeError) as exc:
                raise malformed(f"the envs' observation spaces do not batch: {exc}") from None
        else:
            self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.metadata = dict(description.metadata)
        self.metadata.setdefault("autoreset_mode", AutoresetMode.NEXT_STEP)
        if isinstance(self.metadata["autoreset_mode"], str):
            self.metadata["autoreset_mode"] = AutoresetMode(self.metadata["autoreset_mode"])
        self.render_mode = description.render_mode
        self.spec = self._remote.spec()
        # Samples the codec cannot carry as they are (Graph, registered user spaces); None: nothing to do.
        self._obs_values = {n: batch_converter(self.single_observation_space, n) for n in set(self._remote.sizes)}
        self._action_values = batch_converter(self.single_action_space)
        self._final_obs_values = sample_converter(self.single_observation_space)

    @property
    def shard_sizes(self) -> list[int]:
        return list(self._remote.sizes)

    # -- reset and step -----------------------------------------------------

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, Any]:
        self._check_idle("reset")
        self._ready = None  # a reset replaces the results a reconnect left for the next step or recv
        generation, made_again = self._remote.generation, self._remote.state is Serving.MADE_AGAIN
        requests = self._reset_requests(seed, options)
        # Made again meanwhile, maybe cut into other shards: seeds and masks are split anew.
        answers = self._remote.request_anew(Op.RESET, requests, lambda: self._reset_requests(seed, options))
        made_again = made_again or self._remote.generation != generation
        # A reset refused (here or by the simulator's vector env) changes nothing, as locally.
        if isinstance(seed, (int, np.integer)):
            super().reset(seed=int(seed))  # keeps self.np_random as a local vector env has it
        self._autoreset_step = None
        sizes = self._remote.sizes
        if len(self._obs_parts) != len(sizes):  # never stepped, or cut into other shards
            self._obs_parts = [None] * len(sizes)
        infos: list[Any] = []
        for i, (answer, envs) in enumerate(zip(answers, sizes)):
            if answer is SKIP:
                if self._obs_parts[i] is None:  # as a local vector env: zeros until first reset
                    self._obs_parts[i] = create_empty_array(self.single_observation_space, n=envs, fn=np.zeros)
                infos.append([{} for _ in range(envs)] if self._infos_per_env[i] else {})
                continue
            if self._infos_per_env[i]:
                obs, info = per_env_infos_answer(answer, 2, envs)
            else:
                obs, info = vector_reset_answer(answer, envs)
            self._obs_parts[i] = self._received_obs(obs, envs)
            infos.append(info)
        joined = self._joined_infos(infos)
        if made_again and options is not None and "reset_mask" in options:
            # Every env was new, so every env was reset: those outside the mask lost their episodes.
            for i in np.flatnonzero(~np.asarray(options["reset_mask"])):
                if self.per_env_infos:
                    joined[i][RECONNECTED] = True
                else:
                    joined = self._add_info(joined, {RECONNECTED: True}, int(i))
        return self._joined_obs(), joined

    def _reset_requests(self, seed: Any, options: dict[str, Any] | None) -> list[Any]:
        """One reset request per shard: seeds and the reset mask split by the current shards.
        Envs made again are all new: then a reset mask is checked, and every env reset."""
        bounds = self._remote.bounds
        if options is not None and "reset_mask" in options and self._remote.state is Serving.MADE_AGAIN:
            self._reset_mask(options["reset_mask"])
            options = {key: value for key, value in options.items() if key != "reset_mask"}
        if len(bounds) == 1:  # the shard is the whole vector: its own checks are the local ones
            seeds: list[Any] = [seed]
        elif seed is None:
            seeds = [None] * len(bounds)
        elif isinstance(seed, (int, np.integer)):
            seeds = [[int(seed) + i for i in range(a, b)] for a, b in bounds]
        else:
            assert len(seed) == self.num_envs, (
                f"If seeds are passed as a list the length must match num_envs={self.num_envs} "
                f"but got length={len(seed)}."
            )
            seeds = [list(seed[a:b]) for a, b in bounds]
        mask = None
        if options is not None and "reset_mask" in options and len(bounds) > 1:
            mask = self._reset_mask(options["reset_mask"])
        requests: list[Any] = []
        for (a, b), shard_seed in zip(bounds, seeds):
            if mask is None:
                requests.append({"seed": shard_seed, "options": options})
            elif mask[a:b].any():
                requests.append({"seed": shard_seed, "options": {**options, "reset_mask": mask[a:b]}})
            else:
                requests.append(SKIP)  # no env of this shard is reset: it is not asked
        return requests

    def _reset_mask(self, mask: Any) -> np.ndarray:
        """A reset mask checked as a local ``SyncVectorEnv`` checks it, against the whole vector."""
        assert isinstance(mask, np.ndarray), f"`options['reset_mask': mask]` must be a numpy array, got {type(mask)}"
        assert mask.shape == (self.num_envs,), (
            f"`options['reset_mask': mask]` must have shape `({self.num_envs},)`, got {mask.shape}"
        )
        assert mask.dtype == np.bool_, f"`options['reset_mask': mask]` must have `dtype=np.bool_`, got {mask.dtype}"
        assert np.any(mask), f"`options['reset_mask': mask]` must contain a boolean array, got reset_mask={mask}"
        return mask

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, Any]:
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions: Any) -> None:
        """Send one step to every shard and return at once, as Gymnasium's
        ``AsyncVectorEnv.step_async``: the trainer may compute while the simulators
        step; :meth:`step_wait` gathers the results."""
        self._check_idle("step_async")
        if self._autoreset_step is not None:  # the step after a reconnect: its results are known already
            obs, info = self._autoreset_step
            self._autoreset_step = None
            zeros = np.zeros(self.num_envs, dtype=bool)
            self._ready = (obs, np.zeros(self.num_envs), zeros, zeros.copy(), info)
        elif self._remote.state is Serving.MADE_AGAIN:
            self._ready = self._truncated_by_reconnect()
        else:
            bounds = self._remote.bounds
            parts = [actions] if len(bounds) == 1 else self._split_actions(actions)
            if self._action_values is not None:
                parts = [self._action_values.to_wire(part) for part in parts]
            self._flight = self._remote.send(Op.STEP, parts)
            if self._flight is None:  # made again while sending
                self._ready = self._truncated_by_reconnect()
        self._state = AsyncState.WAITING_STEP

    def step_wait(self, timeout: float | None = None) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, Any]:
        """The results of :meth:`step_async` (``timeout``: seconds, default the
        session's; a shard that does not answer in time raises ``RemoteTimeoutError``)."""
        if self._state is not AsyncState.WAITING_STEP:
            raise NoAsyncCallError("Calling `step_wait` without any prior call to `step_async`.", "step")
        self._state = AsyncState.DEFAULT
        if self._ready is not None:
            ready, self._ready = self._ready, None
            return ready
        flight, self._flight = self._flight, None
        assert flight is not None
        try:
            answered = self._remote.wait(flight, timeout)
        finally:
            self._remote.abandon(flight)  # nothing of this step stays awaited, whatever happened
        if answered is None:  # made again while waiting
            return self._truncated_by_reconnect()
        answers = flight.values()
        sizes = self._remote.sizes
        results = [
            per_env_infos_answer(a, 5, n) if per_env else vector_step_answer(a, n)
            for a, n, per_env in zip(answers, sizes, self._infos_per_env)
        ]
        self._obs_parts = [self._received_obs(r[0], n) for r, n in zip(results, sizes)]
        rewards = concat_arrays([r[1] for r in results])
        terminations = concat_arrays([r[2] for r in results])
        truncations = concat_arrays([r[3] for r in results])
        return self._joined_obs(), rewards, terminations, truncations, self._joined_infos([r[4] for r in results])

    # -- EnvPool-style stepping: a slow or far simulator does not hold back the others --

    def send(self, actions: Any, env_ids: Any = None) -> None:
        """Step the envs ``env_ids`` (ascending, whole shards: see ``shard_sizes``;
        default every env not already stepping) with ``actions``, one per env id,
        without waiting. :meth:`recv` returns the first shards to answer, so envs on
        a near simulator step again while a far one is still answering. Start with
        :meth:`reset`; do not mix with :meth:`step` until every env was received."""
        self._check_pool_api("send")
        if self._ready is not None:
            raise AlreadyPendingCallError("Calling `send` before `recv` returned the reconnected envs.", "recv")
        if self._remote.state is Serving.MADE_AGAIN:  # made again on a new connection: recv reports every env truncated
            self._ready = self._truncated_by_reconnect()
            return
        shards = self._shards_of(env_ids)
        bounds = self._remote.bounds
        if self._autoreset_step is not None:  # the step after a reconnect autoresets every env: known already
            if len(shards) != len(bounds):
                raise ValueError("the envs were made again on a new connection: send every env once")
            obs, info = self._autoreset_step
            self._autoreset_step = None
            zeros = np.zeros(self.num_envs, dtype=bool)
            self._ready = (obs, np.zeros(self.num_envs), zeros, zeros.copy(), info)
            return
        n = sum(bounds[i][1] - bounds[i][0] for i in shards)
        if n not in self._action_batches:
            self._action_batches[n] = batch_space(self.single_action_space, n)
        for _ in zip(iterate(self._action_batches[n], actions), range(n), strict=True):
            pass  # a scalar is a TypeError, a wrong count a ValueError, as for step
        parts: list[Any] = [SKIP] * len(bounds)
        at = 0
        for i in shards:
            size = bounds[i][1] - bounds[i][0]
            part = slice_batch(self.single_action_space, actions, at, at + size) if len(shards) > 1 else actions
            parts[i] = part if self._action_values is None else self._action_values.to_wire(part)
            at += size
        try:
            self._pool = self._remote.send(Op.STEP, parts, into=self._pool)
        except RelayUnavailableError:
            self._pool = None  # the relay is gone and the envs could not be made again: start afresh later
            raise
        if self._pool is None:  # made again while sending
            self._ready = self._truncated_by_reconnect()

    def recv(self, envs: int | None = None, timeout: float | None = None) -> tuple[Any, ...]:
        """Results of :meth:`send` for the first shards to answer, together holding at
        least ``envs`` envs (default: every env sent): ``(obs, rewards, terminations,
        truncations, infos)`` for those envs only, in env id order, with
        ``infos["env_id"]`` the ids they belong to (as EnvPool's ``recv``; an env's
        own ``env_id`` info is replaced: :meth:`recv_with_ids` keeps it)."""
        env_ids, *results, infos = self.recv_with_ids(envs, timeout)
        infos["env_id"] = env_ids  # a dict of this call's own
        return (*results, infos)

    def recv_with_ids(self, envs: int | None = None, timeout: float | None = None) -> tuple[Any, ...]:
        """:meth:`recv` with the env ids apart and the infos as the envs gave them:
        ``(env_ids, obs, rewards, terminations, truncations, infos)``."""
        self._check_pool_api("recv")
        if envs is not None and envs < 1:
            raise ValueError(f"recv(envs={envs}): at least one env")
        if self._ready is not None:  # every env was made again: all of them come back, truncated
            ready, self._ready = self._ready, None
            return (np.arange(self.num_envs), *ready)
        if self._pool is None or not self._pool.asked:
            raise NoAsyncCallError("Calling `recv` without any env sent with `send`.", "send")
        try:
            shards = self._remote.wait(self._pool, timeout, envs)
        except RelayUnavailableError:
            self._pool = None  # the relay is gone and the envs could not be made again: start afresh later
            raise
        if shards is None:  # made again while waiting
            self._pool = None
            self._ready = self._truncated_by_reconnect()
            return self.recv_with_ids()
        for i in shards:  # a shard that failed (its env raised, or it timed out) is idle again; the others wait
            if self._pool.answers[i].error is not None:
                raise self._pool.take([i])[0].error
        replies = self._pool.take(shards)
        bounds, sizes, per_env = self._remote.bounds, self._remote.sizes, self._infos_per_env
        results = []
        for i, reply in zip(shards, replies):
            answer = reply.value()
            results.append(per_env_infos_answer(answer, 5, sizes[i]) if per_env[i] else vector_step_answer(answer, sizes[i]))
            self._obs_parts[i] = self._received_obs(results[-1][0], sizes[i])
        obs = self._joined(lambda: concat_batches(self.single_observation_space, [self._obs_parts[i] for i in shards]))
        return (
            np.concatenate([np.arange(*bounds[i]) for i in shards]),
            obs,
            concat_arrays([r[1] for r in results]),
            concat_arrays([r[2] for r in results]),
            concat_arrays([r[3] for r in results]),
            self._joined_infos([r[4] for r in results], shards),
        )

    def drop_sent(self) -> None:
        """Forget every env sent with :meth:`send` and not received: their results
        are dropped when they come (a reset is next). Nothing is waited for, so a
        stuck or lost simulator does not hold this up."""
        if self._pool is not None:
            self._remote.abandon(self._pool)
            self._pool = None
        self._ready = None  # envs made again report truncation no more: the reset is what they need

    def _shards_of(self, env_ids: Any) -> list[int]:
        """The shards ``env_ids`` make up; they must be whole and not already stepping."""
        bounds = self._remote.bounds
        busy = set(self._pool.asked) if self._pool is not None else set()
        if env_ids is None:
            shards = [i for i in range(len(bounds)) if i not in busy]
        else:
            ids = np.asarray(env_ids, dtype=np.int64).reshape(-1)
            starts = {a: i for i, (a, _) in enumerate(bounds)}
            shards, at = [], 0
            while at < len(ids):
                i = starts.get(int(ids[at]))
                a, b = bounds[i] if i is not None else (0, 0)
                if i is None or not np.array_equal(ids[at : at + b - a], np.arange(a, b)):
                    raise ValueError(
                        f"env_ids must be whole shards in ascending order; this vector env's shards are "
                        f"{[list(range(a, b)) if b - a <= 4 else f'{a}..{b - 1}' for a, b in bounds]}"
                    )
                shards.append(i)
                at += b - a
            if busy.intersection(shards):
                raise ValueError(f"envs of shards {sorted(busy.intersection(shards))} are stepping: recv them first")
        if not shards:
            raise ValueError("no env to send: every env is stepping (recv first)")
        return shards

    def _check_pool_api(self, call: str) -> None:
        """``send``/``recv`` are for Gymnasium's batched infos, and not while ``step_async`` waits."""
        if self.per_env_infos:
            raise UnsupportedError(f"{call}() returns Gymnasium's batched infos; this vector env hands infos per env")
        if self._state is not AsyncState.DEFAULT:
            raise AlreadyPendingCallError(
                f"Calling `{call}` while waiting for a pending call to `{self._state.value}` to complete.",
                self._state.value,
            )

    def _check_not_waiting(self, call: str) -> None:
        """Not while ``step_async`` waits, as Gymnasium's ``AsyncVectorEnv``. Envs sent with
        ``send`` do not stop an attribute call: its request waits behind their step on the
        simulator, and their results stay for ``recv``."""
        if self._state is not AsyncState.DEFAULT:
            raise AlreadyPendingCallError(
                f"Calling `{call}` while waiting for a pending call to `{self._state.value}` to complete.",
                self._state.value,
            )

    def _check_idle(self, call: str) -> None:
        self._check_not_waiting(call)
        if self._pool is not None and self._pool.asked:
            raise AlreadyPendingCallError(f"Calling `{call}` while envs sent with `send` are not received.", "send")

    def _received_obs(self, obs: Any, envs: int) -> Any:
        if envs not in self._obs_values:  # shards cut anew after a reconnect
            self._obs_values[envs] = batch_converter(self.single_observation_space, envs)
        values = self._obs_values[envs]
        return obs if values is None else values.from_wire(obs)

    def _split_actions(self, actions: Any) -> list[Any]:
        """The batch of actions cut into shards, after the checks a local vector env
        makes (a scalar is a ``TypeError``, a wrong count a ``ValueError``)."""
        for _ in zip(iterate(self.action_space, actions), range(self.num_envs), strict=True):
            pass
        return [slice_batch(self.single_action_space, actions, a, b) for a, b in self._remote.bounds]

    def _joined_obs(self) -> Any:
        """Shards' observations joined; shards that disagree are a malformed answer."""
        return self._joined(lambda: concat_batches(self.single_observation_space, self._obs_parts))

    @property
    def _infos_per_env(self) -> list[bool]:
        """Per shard: True if it answers infos per env (sync shards do), else batched."""
        return [m.description.per_env_infos for m in self._remote.made]

    def _joined_infos(self, infos: list[Any], shards: list[int] | None = None) -> Any:
        """The shards' infos as one: batched here in env order when any shard sent
        them per env (a shard that batched its own is unbatched first), or handed
        over per env (SB3); shards that all batched are merged as they are.
        ``shards``: the infos are those shards' (default: every shard's)."""
        if self._final_obs_values is not None:
            infos = [convert_final_obs(info, self._final_obs_values.from_wire) for info in infos]
        shards = list(range(len(self._remote.sizes))) if shards is None else shards
        per_env = [self._infos_per_env[i] for i in shards]
        sizes = [self._remote.sizes[i] for i in shards]
        if not self.per_env_infos and not any(per_env):
            return merge_infos(infos, sizes)
        each = []
        for info, answered_per_env, envs in zip(infos, per_env, sizes):
            each += info if answered_per_env else unbatch_infos(info, envs)
        return each if self.per_env_infos else self._batched_infos(each)

    def _batched_infos(self, each: list[dict[str, Any]]) -> dict[str, Any]:
        """Gymnasium's batched infos, built as a local sync vector env builds them: env
        by env, an ended episode's ``final_obs``/``final_info`` before its reset info."""
        check_per_env_fill(each, len(each))
        add = self._add_info if len(each) == self.num_envs else _InfoBatcher(len(each))._add_info  # recv: some envs
        out: dict[str, Any] = {}
        try:
            for i, info in enumerate(each):
                if not info:  # adds nothing (the common case); Gymnasium's _add_info would loop over no key
                    continue
                if "final_info" in info and "final_obs" in info:
                    out = add(out, {"final_obs": info["final_obs"], "final_info": info["final_info"]}, i)
                    info = {k: v for k, v in info.items() if k not in ("final_obs", "final_info")}
                out = add(out, info, i)
        except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:  # values of one key that do not batch
            raise malformed(f"per-env infos do not batch: {type(exc).__name__}: {exc}") from None
        return out

    @staticmethod
    def _joined(join: Callable[[], Any]) -> Any:
        try:
            return join()
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise malformed(f"shard observations do not join into one batch: {exc}") from None

    def _truncated_by_reconnect(self) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, Any]:
        """Every env was made again on a new relay connection: report all episodes
        truncated, in the vector env's own autoreset convention."""
        obs, reset_info = self.reset()
        mode = self.metadata["autoreset_mode"]
        same_step = mode == AutoresetMode.SAME_STEP
        env_obs = list(iterate(self.observation_space, obs))
        if self.per_env_infos:
            infos: Any = [
                {**(reset_info[i] if same_step else {}), RECONNECTED: True}
                | ({"final_obs": env_obs[i], "final_info": {}} if same_step else {})
                for i in range(self.num_envs)
            ]
        else:
            # SAME_STEP returns the new episodes' reset infos with this step, as SyncVectorEnv does.
            infos = dict(reset_info) if same_step else {}
            for i in range(self.num_envs):
                extra: dict[str, Any] = {RECONNECTED: True}
                if same_step:  # the new episode's first obs stands in for the lost final one
                    extra.update(final_obs=env_obs[i], final_info={})
                infos = self._add_info(infos, extra, i)
        if mode == AutoresetMode.NEXT_STEP:
            self._autoreset_step = (obs, reset_info)  # the next step is the autoreset step: it ignores actions
        done = np.ones(self.num_envs, dtype=bool)
        return obs, np.zeros(self.num_envs), np.zeros(self.num_envs, dtype=bool), done, infos

    # -- methods and attributes of the envs on the simulators ---------------

    @property
    def np_random_seed(self) -> Any:
        """The hosted vector env's own ``np_random_seed`` (a sync vector env's is a
        tuple with one seed per env)."""
        arg = {"do": "get", "scope": "self", "name": "np_random_seed"}
        answers = self._remote.call(Op.ATTR, [arg] * len(self._remote.bounds))
        if len(answers) == 1:
            return answers[0]
        return tuple(seed for part in answers for seed in attribute_answer(part, None))

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Gymnasium's ``VectorEnv.call``, run by each shard's vector env."""
        return self._every_env({"do": "call", "name": name, "args": list(args), "kwargs": kwargs})

    def get_attr(self, name: str) -> tuple[Any, ...]:
        """Gymnasium's ``VectorEnv.get_attr`` (a method is called, as locally)."""
        return self._every_env({"do": "get", "name": name})

    def set_attr(self, name: str, values: list[Any] | tuple[Any, ...] | Any) -> None:
        """Gymnasium's ``VectorEnv.set_attr``: one value for all envs, or a list or tuple of one per env."""
        if isinstance(values, (list, tuple)):
            if len(values) != self.num_envs:
                raise ValueError(
                    "Values must be a list or tuple with length equal to the number of environments. "
                    f"Got `{len(values)}` values for {self.num_envs} environments."
                )
            args = [{"do": "set", "name": name, "value": values[a:b]} for a, b in self._remote.bounds]
        else:
            args = [{"do": "set", "name": name, "value": values}] * len(self._remote.bounds)
        self._check_not_waiting("set_attr")
        self._remote.call(Op.ATTR, args)

    def _every_env(self, arg: dict[str, Any]) -> tuple[Any, ...]:
        self._check_not_waiting(_ATTR_CALLS[arg["do"]])
        answers = self._remote.call(Op.ATTR, [arg] * len(self._remote.bounds))
        return tuple(item for part, n in zip(answers, self._remote.sizes) for item in attribute_answer(part, n))

    def call_each(self, indices: list[int], name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        """SB3's ``env_method`` on the envs at ``indices`` (results in that order)."""
        return self._each(indices, {"do": "call", "name": name, "args": list(args), "kwargs": kwargs})

    def get_each(self, indices: list[int], name: str) -> list[Any]:
        """SB3's ``get_attr``: the attribute as is (a method is not called)."""
        return self._each(indices, {"do": "get", "name": name})

    def set_each(self, indices: list[int], name: str, value: Any) -> None:
        """SB3's ``set_attr``: set on the outermost env of each index."""
        self._each(indices, {"do": "set", "name": name, "value": value})

    def _each(self, indices: list[int], arg: dict[str, Any]) -> list[Any]:
        """``arg`` on the envs at global ``indices``: one request per shard that has any."""
        self._check_not_waiting(_ATTR_CALLS[arg["do"]])
        bounds = self._remote.bounds
        local: list[list[int]] = [[] for _ in bounds]
        where = []
        for index in indices:
            if not 0 <= index < self.num_envs:
                raise IndexError(f"env index {index} out of range for {self.num_envs} envs")
            shard = next(s for s, (a, b) in enumerate(bounds) if a <= index < b)
            where.append((shard, len(local[shard])))
            local[shard].append(index - bounds[shard][0])
        args = [{**arg, "scope": "each", "indices": ix} if ix else SKIP for ix in local]
        answers = self._remote.call(Op.ATTR, args)
        if arg["do"] == "set":
            return []
        results = [attribute_answer(a, len(ix)) if ix else [] for a, ix in zip(answers, local)]
        return [results[shard][k] for shard, k in where]

    # -- rendering and closing ----------------------------------------------

    def render(self) -> tuple[Any, ...] | None:
        self._check_not_waiting("render")
        # New envs render once reset; they may be cut into other shards.
        frames = self._remote.request_reset(Op.RENDER, lambda: [None] * len(self._remote.bounds), self.reset)
        if all(f is None for f in frames):
            return None
        return tuple(frame for shard in frames if shard is not None for frame in shard)

    def close_extras(self, **kwargs: Any) -> None:
        remote = getattr(self, "_remote", None)
        if remote is not None:
            remote.close()

    def __del__(self) -> None:
        """Gymnasium closes a vector env that is garbage-collected. Collection can run in
        any thread at any allocation, even inside this connection's own send: so here the
        envs are only handed back for the session to close at its next call, never over
        the network from the finalizer."""
        remote = getattr(self, "_remote", None)
        if remote is not None:
            remote.close_later()

    def __repr__(self) -> str:
        return f"<RemoteVectorEnv {self._remote.env_id} num_envs={self.num_envs} shards={self._remote.sizes}>"

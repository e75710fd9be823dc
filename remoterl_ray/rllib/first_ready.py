"""``FirstReadyEnvRunner``: an RLlib env runner whose envs do not step in lockstep.

RLlib's ``SingleAgentEnvRunner`` steps all its envs at once, so one slow or far
simulator holds back every env of the runner. This runner steps the envs of
whichever simulators answer first (``RemoteVectorEnv.send``/``recv``): as soon
as a shard's results arrive, its episodes get the step, the RLModule computes
the shard's next actions and the shard steps again, while a far shard is still
answering. Envs still stepping when ``sample()`` has its timesteps stay in
flight; their step lands in the next call's episode chunks.

Where it pays: off-policy and asynchronous algorithms (DQN, SAC, APPO, IMPALA)
whose learners accept actions computed with slightly older weights. On-policy
PPO gets the same correct episodes, but an action sent just before a weight
update is recorded after it. With a single simulator every env answers at
once and the samples equal the lockstep runner's, value for value.

Sampling by episodes (``num_episodes``, evaluation) resets every env, so it
drops the envs in flight and runs RLlib's own lockstep loop.

A simulator that stops answering while the others go on still times out: an
env waited for longer than the session's ``timeout`` (counted inside
``sample()`` only) fails the step, which takes RLlib's error path
(``restart_failed_sub_environments``) and resets every env at the next
``sample()``. An attribute call on the vector env (``get_attr``, ``call``,
``render``: in a callback, or between samples for a curriculum) is answered
after the steps in flight on each simulator, whose results stay for this
runner.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from gymnasium.wrappers.vector import DictInfoToList
from ray.rllib.core.columns import Columns
from ray.rllib.env.env_errors import StepFailedRecreateEnvError
from ray.rllib.env.env_runner import ENV_STEP_FAILURE, NUM_ENV_STEP_FAILURES_LIFETIME
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.metrics import (
    ENV_STEP_TIMER,
    ENV_TO_MODULE_CONNECTOR,
    MODULE_TO_ENV_CONNECTOR,
    RLMODULE_INFERENCE_TIMER,
    WEIGHTS_SEQ_NO,
)
from ray.rllib.utils.spaces.space_utils import batch, unbatch

from .env_runner import LOST, RemoteEnvRunner

log = logging.getLogger("remoterl.rllib")


class _InfoList:
    """Gymnasium's own conversion of batched infos to one dict per env, for a subset of envs."""

    _convert_info_to_list = DictInfoToList._convert_info_to_list

    def __init__(self, num_envs: int) -> None:
        self.num_envs = num_envs


class FirstReadyEnvRunner(RemoteEnvRunner):
    """A ``RemoteEnvRunner`` that steps the envs of the first simulators to answer.

    Use it by name: ``config.env_runners(env_runner_cls=FirstReadyEnvRunner)``.
    """

    def make_env(self) -> None:
        self._stepping: dict[int, tuple[Any, dict[str, Any], float]] = {}  # env -> (action, model outputs, sent at)
        # The envs with a new observation, not yet acted on, and their env-to-module batch: one group at a
        # time, since the connectors' shared data remembers the order of the last batch until it is acted on.
        self._acting: tuple[list[int], Any] | None = None
        self._send_error: Exception | None = None  # raised where the step is received, as RLlib's loop would
        self._paused_at: float | None = None  # when the last sample() returned: time outside it is not waiting
        super().make_env()

    def stop(self) -> None:
        self._drop_steps_in_flight()
        super().stop()

    def _sample(
        self,
        *,
        num_timesteps: int | None = None,
        num_episodes: int | None = None,
        explore: bool,
        random_actions: bool = False,
        force_reset: bool = False,
    ) -> list[SingleAgentEpisode]:
        if num_timesteps is None:  # by episodes: every env is reset, in lockstep
            self._drop_steps_in_flight()
            return super()._sample(num_episodes=num_episodes, explore=explore, random_actions=random_actions)
        self._resume_clock()
        try:
            if force_reset or self._needs_initial_reset:
                self._reset_all(explore)
            ts, done = 0, []
            while ts < num_timesteps:
                if self._acting is not None:
                    acting, self._acting = self._acting, None
                    self._act(*acting, explore, random_actions, ts)
                received = self._receive()
                if received is ENV_STEP_FAILURE:  # RLlib made the env again: start afresh, as its own loop does
                    ts = 0
                    self._reset_all(explore)
                    continue
                ts += self._record(*received, explore, done)
            return self._finish(ts, done)
        finally:
            self._paused_at = time.monotonic()

    def _resume_clock(self) -> None:
        """Envs in flight wait only while ``sample()`` runs: the time since the last
        call returned (a learner update, a checkpoint) does not count against the
        timeout, so only a simulator that is slow while being waited for fails."""
        if self._paused_at is not None:
            pause = time.monotonic() - self._paused_at
            self._stepping = {
                i: (action, outputs, sent + pause) for i, (action, outputs, sent) in self._stepping.items()
            }
        self._paused_at = None

    # -- the steps of one round: act on the envs that answered, send, receive the first to answer --

    def _reset_all(self, explore: bool) -> None:
        self._drop_steps_in_flight()
        self._reset_envs_and_episodes(explore)  # RLlib's own: new episodes, reset, env-to-module, callbacks
        self._acting = (list(range(self.num_envs)), self._cached_to_module)
        self._cached_to_module = None

    def _act(self, env_ids: list[int], to_module: Any, explore: bool, random_actions: bool, ts: int) -> None:
        """The RLModule's (or random) actions for ``env_ids``, sent to their simulators."""
        episodes = [self._ongoing_episodes[i] for i in env_ids]
        if random_actions:
            to_env = {Columns.ACTIONS: batch([self.env.single_action_space.sample() for _ in env_ids])}
        else:
            with self.metrics.log_time(RLMODULE_INFERENCE_TIMER):
                if explore:
                    runners = self.config.num_env_runners or 1
                    t = (self.num_env_steps_sampled_lifetime // runners + ts) * runners
                    to_env = self.module.forward_exploration(to_module, t=t)
                else:
                    to_env = self.module.forward_inference(to_module)
            to_env = self._module_to_env(
                rl_module=self.module,
                batch=to_env,
                episodes=episodes,
                explore=explore,
                shared_data=self._shared_data,
                metrics=self.metrics,
                metrics_prefix_key=(MODULE_TO_ENV_CONNECTOR,),
            )
        actions = to_env.pop(Columns.ACTIONS)
        for_env = to_env.pop(Columns.ACTIONS_FOR_ENV, actions)
        now = time.monotonic()
        for k, (i, action) in enumerate(zip(env_ids, unbatch(actions))):
            outputs = {key: value[k] for key, value in to_env.items()}
            outputs[WEIGHTS_SEQ_NO] = self._weights_seq_no
            self._stepping[i] = (action, outputs, now)
        try:
            self.env.unwrapped.send(for_env, env_ids)
        except Exception as exc:  # reported where the step is received, as a failure while waiting would be
            self._send_error = exc

    def _receive(self) -> Any:
        """``(env_ids, obs, rewards, terminateds, truncateds, infos)`` of the first
        envs to answer; ``ENV_STEP_FAILURE`` when RLlib's error policy made the env again."""
        try:
            with self.metrics.log_time(ENV_STEP_TIMER):
                error, self._send_error = self._send_error, None
                if error is not None:
                    raise error
                env_ids, obs, rewards, terminateds, truncateds, infos = self.env.unwrapped.recv_with_ids(
                    envs=1, timeout=self._time_left()
                )
        except Exception as exc:
            return self._step_failed(exc)
        self._log_env_steps(metric=self._metrics_num_try_env_step, num_steps=1)
        env_ids = [int(i) for i in env_ids]
        return (
            env_ids,
            unbatch(obs),
            rewards,
            terminateds,
            truncateds,
            _InfoList(len(env_ids))._convert_info_to_list(infos),
        )

    def _time_left(self) -> float:
        """What is left of the session's request timeout for the env that has been
        stepping longest: a stuck simulator times out while the others keep answering."""
        oldest = min((sent for _, _, sent in self._stepping.values()), default=time.monotonic())
        return max(0.0, self._session.settings.timeout - (time.monotonic() - oldest))

    def _step_failed(self, exc: Exception) -> Any:
        """RLlib's policy for a failed env step (``restart_failed_sub_environments``).
        Either way every env is reset at the next ``sample()``: nothing is left half in flight."""
        self.metrics.log_value(NUM_ENV_STEP_FAILURES_LIFETIME, 1, reduce="lifetime_sum")
        self._drop_steps_in_flight()
        self._needs_initial_reset = True
        if isinstance(exc, LOST):  # as LossMeansRecreate maps it for a lockstep step
            recreate = StepFailedRecreateEnvError(str(exc))
            recreate.__cause__, exc = exc, recreate
        if not self.config.restart_failed_sub_environments:
            log.error("remoterl: env step failed and restart_failed_sub_environments is False: %s", exc)
            raise RuntimeError(f"env step failed: {exc}") from exc
        if not isinstance(exc, StepFailedRecreateEnvError):
            log.exception("remoterl: env step failed; making the env again", exc_info=exc)
        self.make_env()
        return ENV_STEP_FAILURE

    def _record(
        self,
        env_ids: list[int],
        observations: list[Any],
        rewards: np.ndarray,
        terminateds: np.ndarray,
        truncateds: np.ndarray,
        infos: list[dict[str, Any]],
        explore: bool,
        done: list[SingleAgentEpisode],
    ) -> int:
        """Add the received step to each env's episode, as RLlib's loop does; returns the env steps taken."""
        steps, started, actions = 0, set(), []
        for k, i in enumerate(env_ids):
            episode = self._ongoing_episodes[i]
            action, outputs, _ = self._stepping.pop(i)
            actions.append(action)
            if not episode.is_reset:  # the step after an episode ended: the env reset itself
                episode.add_env_reset(observation=observations[k], infos=infos[k])
                started.add(i)
                continue
            steps += 1
            episode.add_env_step(
                observation=observations[k],
                action=action,
                reward=rewards[k],
                infos=infos[k],
                terminated=terminateds[k],
                truncated=truncateds[k],
                extra_model_outputs=outputs,
            )
        if self.module is not None:
            to_module = self._env_to_module(
                episodes=[self._ongoing_episodes[i] for i in env_ids],
                batch={},
                explore=explore,
                rl_module=self.module,
                shared_data=self._shared_data,
                metrics=self.metrics,
                metrics_prefix_key=(ENV_TO_MODULE_CONNECTOR,),
                **{
                    Columns.OBS: observations,
                    Columns.ACTIONS: actions,
                    Columns.REWARDS: rewards,
                    Columns.INFOS: infos,
                    Columns.TERMINATEDS: terminateds,
                    Columns.TRUNCATEDS: truncateds,
                },
            )
            self._acting = (env_ids, to_module)
        else:
            self._acting = (env_ids, None)
        for i in env_ids:
            self._make_on_episode_callback(
                "on_episode_start" if i in started else "on_episode_step", i, self._ongoing_episodes
            )
            episode = self._ongoing_episodes[i]
            if episode.is_done:
                self._make_on_episode_callback("on_episode_end", i, self._ongoing_episodes)
                done.append(episode.to_numpy() if self.episodes_to_numpy else episode)
                self._new_episode(i, self._ongoing_episodes)
        return steps

    def _finish(self, ts: int, done: list[SingleAgentEpisode]) -> list[SingleAgentEpisode]:
        """Done episodes and a chunk of every ongoing one that grew; all ongoing
        episodes go on in a new chunk (an env in flight records its step there)."""
        self._done_episodes_for_metrics.extend(done)
        going_on = [e.cut(len_lookback_buffer=self.config.episode_lookback_horizon) for e in self._ongoing_episodes]
        chunks = []
        for episode in self._ongoing_episodes:
            if len(episode) == 0:  # just reset, or in flight all along: nothing to return
                continue
            episode.validate()
            self._ongoing_episodes_for_metrics[episode.id_].append(episode)
            chunks.append(episode.to_numpy() if self.episodes_to_numpy else episode)
        self._ongoing_episodes = going_on
        self._log_env_steps(metric=self._metrics_num_env_steps_sampled, num_steps=ts)
        self._increase_sampled_metrics(ts, len(done))
        return done + chunks

    def _drop_steps_in_flight(self) -> None:
        """Forget the envs still stepping (every env is about to be reset, or made again)."""
        if self.env is not None and not self.env.closed:
            self.env.unwrapped.drop_sent()
        self._stepping, self._acting, self._send_error = {}, None, None

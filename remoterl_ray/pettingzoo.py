"""PettingZoo envs hosted by simulators, driven with PettingZoo's own API.

    import remoterl_ray
    from remoterl_ray.pettingzoo import parallel_env, env

    remoterl_ray.init(role="trainer")
    par = parallel_env("pettingzoo.sisl.multiwalker_v9:parallel_env", n_walkers=3)
    aec = env("pettingzoo.classic.tictactoe_v3:env")

The factory is named as ``"module:function"`` (code never travels) and runs on
a simulator whose allowlist names it. A factory that makes the other kind is
converted there with PettingZoo's own ``aec_to_parallel`` or
``parallel_to_aec``. Each parallel step, and each AEC turn with what ``last()``
reads, is one frame; agents joining and leaving, per-agent spaces and infos
arrive as the env produced them.
"""

from __future__ import annotations

import copy
from typing import Any

try:
    from pettingzoo import AECEnv, ParallelEnv
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError("remoterl_ray.pettingzoo needs PettingZoo: pip install 'remoterl-ray[pettingzoo]'") from exc

from .protocol.errors import EnvsMadeAgainError
from .trainer.configure import current_session
from .trainer.remote_agents import AgentEnvs, AgentTurns
from .trainer.session import TrainerSession


def _session() -> TrainerSession:
    session = current_session()
    if session is None:
        # Not a silent local fallback: without a trainer there is no remote env to give.
        raise RuntimeError("remote PettingZoo envs need a trainer: call remoterl_ray.init(role='trainer') first")
    return session


def _factory(target: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise ValueError(f"name the env factory as 'module:function', got {target!r}")
    return {"factory": {"target": target, "kwargs": kwargs}}


class _Mirrored:
    """What both remote PettingZoo envs hold here: the simulator's metadata, agents and spaces."""

    _remote: AgentEnvs | AgentTurns

    def _mirror(self, remote: AgentEnvs | AgentTurns) -> None:
        self._remote = remote
        self.metadata = remote.metadata
        self.render_mode = remote.render_mode
        self.possible_agents = list(remote.spaces.possible_agents)
        self.observation_spaces = remote.spaces.observation_spaces
        self.action_spaces = remote.spaces.action_spaces

    def observation_space(self, agent: Any) -> Any:
        return self.observation_spaces[agent]

    def action_space(self, agent: Any) -> Any:
        return self.action_spaces[agent]

    def close(self) -> None:
        remote = getattr(self, "_remote", None)
        if remote is not None:
            remote.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._remote.name}>"


class RemoteParallelEnv(_Mirrored, ParallelEnv):
    """A PettingZoo ``ParallelEnv`` whose env lives on a simulator."""

    def __init__(self, target: str, **kwargs: Any) -> None:
        self._mirror(AgentEnvs(_session(), target, 1, _factory(target, kwargs)))
        self.agents = list(self._remote.agents[0])

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        obs, infos = self._remote.reset([seed], options)[0]
        self.agents = list(self._remote.agents[0])
        return obs, infos

    def step(self, actions: dict) -> tuple[dict, dict, dict, dict, dict]:
        result = self._remote.step([{"step": actions}], all_key=False)[0]
        self.agents = list(self._remote.agents[0])
        return result

    def render(self) -> Any:
        return self._remote.render(lambda: self.reset())[0]

    def state(self) -> Any:
        return self._remote.attribute(0, {"do": "call", "name": "state"})


class RemoteAECEnv(_Mirrored, AECEnv):
    """A PettingZoo ``AECEnv`` whose env lives on a simulator. The selected agent's
    observation comes with each turn; others are asked for when observed."""

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__()
        self._mirror(AgentTurns(_session(), target, _factory(target, kwargs)))
        self.agents = list(self._remote.agents)
        self._seen: tuple[Any, Any] | None = None  # (agent, observation) of the turn

    def _take(self, turn: dict[str, Any]) -> None:
        self.agents = turn["agents"]
        self.rewards = turn["rewards"]
        self._cumulative_rewards = turn["cumulative"]
        self.terminations = turn["terminations"]
        self.truncations = turn["truncations"]
        self.infos = turn["infos"]
        if turn["selected"] is not None:
            self.agent_selection = turn["selected"]
        self._seen = (turn["selected"], turn["observation"]) if turn["observed"] else None

    def reset(self, seed: int | None = None, options: dict | None = None) -> None:
        self._take(self._remote.reset(seed, options))

    def step(self, action: Any) -> None:
        turn = self._remote.step(action, self.agent_selection)
        if turn is None:  # an AEC loop has no way to hear of a truncation it did not step into
            raise EnvsMadeAgainError(
                f"the relay connection of {self!r} was lost and its env made again on a new one: "
                "this episode is over; reset() the env to play on"
            )
        self._take(turn)

    def observe(self, agent: Any) -> Any:
        if self._seen is not None and self._seen[0] == agent:
            return copy.deepcopy(self._seen[1])  # as a local observe: the caller's own object
        return self._remote.observe(agent)

    def render(self) -> Any:
        return self._remote.render(lambda: self.reset())

    def state(self) -> Any:
        return self._remote.attribute({"do": "call", "name": "state"})


def parallel_env(target: str, **kwargs: Any) -> RemoteParallelEnv:
    """``target(**kwargs)`` made on a simulator, as a PettingZoo ``ParallelEnv`` here."""
    return RemoteParallelEnv(target, **kwargs)


def env(target: str, **kwargs: Any) -> RemoteAECEnv:
    """``target(**kwargs)`` made on a simulator, as a PettingZoo ``AECEnv`` here."""
    return RemoteAECEnv(target, **kwargs)

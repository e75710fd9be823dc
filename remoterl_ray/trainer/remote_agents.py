"""Multi-agent envs hosted by simulators: the one core the RLlib and PettingZoo
integrations construct.

``AgentEnvs`` holds ``num_envs`` parallel multi-agent envs spread over the
workspace's simulators. Each call carries an entry per env (step it with a
map of actions, reset it, or leave it alone), so a step of any number of envs
and agents is one frame per simulator. ``AgentTurns`` holds one PettingZoo
AEC env. Answers are checked here: a simulator's per-agent maps must name
only its own agents, so the classes above never index a malformed answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..protocol.descriptions import AgentSpaces
from ..protocol.errors import ErrorCode, ProtocolError
from ..protocol.frames import Op
from ..protocol.space_values import ValueConverter, sample_converter
from .answers import malformed
from .remote_env import RECONNECTED
from .session import TrainerSession
from .shards import SKIP, Serving, Shards

ALL = "__all__"  # RLlib: the key of terminateds and truncateds that ends the whole episode
COMMON = "__common__"  # RLlib: the infos key shared by all agents
_NUMBERS = (bool, int, float, np.bool_, np.number)


def _converters(spaces: dict[Any, Any]) -> dict[Any, ValueConverter] | None:
    out = {aid: c for aid, space in spaces.items() if (c := sample_converter(space)) is not None}
    return out or None


def _convert(converters: dict[Any, ValueConverter] | None, values: dict[Any, Any], way: str) -> dict[Any, Any]:
    if converters is None:
        return values
    return {aid: getattr(converters[aid], way)(v) if aid in converters else v for aid, v in values.items()}


class Agents:
    """A multi-agent env's agents and spaces, and the checks its answers pass."""

    def __init__(self, spaces: AgentSpaces) -> None:
        self.kind = spaces.kind
        self.possible_agents = list(spaces.possible_agents)
        self.observation_spaces = dict(spaces.observation_spaces)
        self.action_spaces = dict(spaces.action_spaces)
        self._known = frozenset(self.possible_agents)
        self._obs_values = _converters(self.observation_spaces)
        self._action_values = _converters(self.action_spaces)

    def live(self, value: Any) -> list[Any]:
        if not isinstance(value, list) or not self._known.issuperset(value):
            raise malformed("the live agents must be a list of possible agents")
        return value

    def per_agent(self, value: Any, what: str, extra: str | None = None) -> dict[Any, Any]:
        """A map keyed by possible agents (and ``extra``, RLlib's ``__all__`` or ``__common__``)."""
        if isinstance(value, dict) and (
            self._known.issuperset(value) or (extra in value and len(value.keys() - self._known) == 1)
        ):
            return value
        raise malformed(f"{what} must be a map keyed by the env's agents")

    def obs_in(self, value: Any) -> dict[Any, Any]:
        return _convert(self._obs_values, self.per_agent(value, "observations"), "from_wire")

    def actions_out(self, actions: Any) -> Any:
        if not isinstance(actions, dict):
            raise TypeError(f"actions must be a map of agent ids to actions, got {type(actions).__name__}")
        return _convert(self._action_values, actions, "to_wire")

    def reset_answer(self, value: Any) -> tuple[dict[Any, Any], dict[Any, Any], list[Any]]:
        if not isinstance(value, list) or len(value) != 3:
            raise malformed("a multi-agent reset answers [observations, infos, agents]")
        return self.obs_in(value[0]), self.per_agent(value[1], "infos", COMMON), self.live(value[2])

    def step_answer(self, value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list) or len(value) != 6:
            raise malformed("a multi-agent step answers five maps and the live agents")
        obs, rewards, terminated, truncated, infos, live = value
        for name, item in (("rewards", rewards), ("terminations", terminated), ("truncations", truncated)):
            self.per_agent(item, name, ALL)
            if not all(isinstance(v, _NUMBERS) for v in item.values()):
                raise malformed(f"{name} must hold numbers")
        return (
            self.obs_in(obs), rewards, terminated, truncated, self.per_agent(infos, "infos", COMMON), self.live(live)
        )


class AgentEnvs:
    """``num_envs`` parallel multi-agent envs over the simulators. ``make`` names the
    env: ``{"creator": ...}`` (an RLlib creator) or ``{"factory": ...}`` (a function
    called with keyword arguments)."""

    def __init__(self, session: TrainerSession, name: str, num_envs: int, make: dict[str, Any]) -> None:
        self._remote = Shards(session, name, num_envs, {**make, "agents": "parallel"}, vector=True)
        description = self._remote.description
        assert description.agents is not None  # the session checked the kind made
        self.spaces = Agents(description.agents)
        self.metadata = dict(description.metadata)
        self.render_mode = description.render_mode
        self.num_envs = num_envs
        self.agents = self._made_agents()

    def _made_agents(self) -> list[list[Any]]:
        return [self.spaces.live(list(live)) for m in self._remote.made for live in m.description.agents.agents]

    @property
    def closed(self) -> bool:
        return self._remote.closed

    def _per_shard(self, entries: list[Any]) -> list[Any]:
        """The entries cut into one request per shard (``SKIP``: nothing for that shard)."""
        return [
            entries[start:end] if any(e is not None for e in entries[start:end]) else SKIP
            for start, end in self._remote.bounds
        ]

    def _joined(self, answers: list[Any]) -> list[Any]:
        out: list[Any] = []
        for answer, envs in zip(answers, self._remote.sizes):
            if answer is SKIP:
                out += [None] * envs
            elif not isinstance(answer, list) or len(answer) != envs:
                raise malformed(f"a shard of {envs} envs must answer a list of {envs} entries")
            else:
                out += answer
        return out

    def reset(self, seeds: list[Any], options: Any) -> list[tuple[dict[Any, Any], dict[Any, Any]] | None]:
        """Reset the envs whose seed entry is not SKIP; their (observations, infos)."""
        def entries() -> list[Any]:
            return [None if s is SKIP else {"seed": s, "options": options} for s in seeds]

        answers = self._joined(self._remote.request_anew(Op.RESET, self._per_shard(entries()), lambda: self._per_shard(entries())))
        out: list[Any] = []
        for i, (entry, answer) in enumerate(zip(entries(), answers)):
            if entry is None:
                out.append(None)
                continue
            if answer is None:
                raise malformed("an env asked to reset did not answer")
            obs, infos, self.agents[i] = self.spaces.reset_answer(answer)
            out.append((obs, infos))
        return out

    def step(self, entries: list[Any], *, all_key: bool) -> list[tuple[Any, ...] | None]:
        """Per env: None, ``{"step": actions}`` or ``{"reset": {...}}``. Each answer is a
        step's five maps or a reset's two; if the envs were made again meanwhile, every
        asked env is reset and its episode reported truncated (``all_key``: with RLlib's
        ``__all__``)."""
        wire = [
            {"step": self.spaces.actions_out(e["step"])} if e is not None and "step" in e else e for e in entries
        ]
        answers = self._remote.request(Op.STEP, self._per_shard(wire))
        if answers is None:
            return self._truncated_by_reconnect(entries, all_key)
        out: list[Any] = []
        for i, (entry, answer) in enumerate(zip(entries, self._joined(answers))):
            if entry is None:
                out.append(None)
            elif answer is None:
                raise malformed("an env asked to step did not answer")
            elif "step" in entry:
                *result, self.agents[i] = self.spaces.step_answer(answer)
                out.append(tuple(result))
            else:
                obs, infos, self.agents[i] = self.spaces.reset_answer(answer)
                out.append((obs, infos))
        return out

    def _truncated_by_reconnect(self, entries: list[Any], all_key: bool) -> list[Any]:
        seeds = [SKIP if e is None else None for e in entries]
        self.agents = self._made_agents()
        out: list[Any] = []
        for entry, result in zip(entries, self.reset(seeds, None)):
            if entry is None or result is None:
                out.append(None)
                continue
            obs, infos = result
            if "reset" in entry:
                out.append((obs, infos))
                continue
            ended = {aid: True for aid in obs}
            out.append((
                obs,
                {aid: 0.0 for aid in obs},
                {aid: False for aid in obs} | ({ALL: False} if all_key else {}),
                ended | ({ALL: True} if all_key else {}),
                {aid: {**infos.get(aid, {}), RECONNECTED: True} for aid in obs},
            ))  # fmt: skip
        return out

    @property
    def made_again(self) -> bool:
        return self._remote.state is Serving.MADE_AGAIN

    def shard_of(self, index: int) -> tuple[int, int]:
        """Which shard hosts env ``index``, and where in it."""
        for shard, (start, end) in enumerate(self._remote.bounds):
            if start <= index < end:
                return shard, index - start
        raise IndexError(index)

    def attribute(self, index: int, request: dict[str, Any]) -> Any:
        """An attribute request on env ``index`` (PettingZoo's ``state()``, say)."""
        shard, at = self.shard_of(index)
        args: list[Any] = [SKIP] * len(self._remote.sizes)
        args[shard] = {**request, "index": at}
        return self._remote.call(Op.ATTR, args)[shard]

    def render(self, reset: Callable[[], Any]) -> list[Any]:
        """Every env's render, in env order."""
        answers = self._remote.request_reset(Op.RENDER, lambda: [None] * len(self._remote.sizes), reset)
        return self._joined(answers)

    def close(self) -> None:
        self._remote.close()


class AgentTurns:
    """One PettingZoo AEC env on a simulator; each answer is the turn that follows."""

    def __init__(self, session: TrainerSession, name: str, make: dict[str, Any]) -> None:
        self._remote = Shards(session, name, 1, {**make, "agents": "aec"}, vector=False)
        description = self._remote.description
        assert description.agents is not None
        self.spaces = Agents(description.agents)
        self.metadata = dict(description.metadata)
        self.render_mode = description.render_mode
        self.agents = self.spaces.live(list(description.agents.agents[0]))

    @property
    def closed(self) -> bool:
        return self._remote.closed

    def turn(self, value: Any) -> dict[str, Any]:
        """A reset's or step's answer, checked: the turn the trainer's env now shows."""
        if not isinstance(value, dict):
            raise malformed("an AEC answer must be a map")
        spaces = self.spaces
        live = spaces.live(value.get("agents"))
        selected = value.get("selected")
        if selected is not None and selected not in spaces.observation_spaces:
            raise malformed("the selected agent must be one of the env's agents")
        turn = {"agents": live, "selected": selected}
        for key in ("rewards", "cumulative", "terminations", "truncations", "infos"):
            turn[key] = spaces.per_agent(value.get(key), key)
        turn["observed"] = value.get("observed") is True and selected is not None
        observation = value.get("observation")
        turn["observation"] = spaces.obs_in({selected: observation})[selected] if turn["observed"] else None
        return turn

    def reset(self, seed: Any, options: Any) -> dict[str, Any] | None:
        """The turn after a reset."""
        request = [{"seed": seed, "options": options}]
        return self.turn(self._remote.request_anew(Op.RESET, request, lambda: request)[0])

    def step(self, action: Any, selected: Any) -> dict[str, Any] | None:
        """The turn after ``selected`` acts; None if the env was made again meanwhile."""
        if action is not None:
            action = self.spaces.actions_out({selected: action})[selected]
        answers = self._remote.request(Op.STEP, [{"action": action}])
        return None if answers is None else self.turn(answers[0])

    def observe(self, agent: Any) -> Any:
        if agent not in self.spaces.observation_spaces:
            raise ProtocolError(f"no agent {agent!r:.60} in this env", code=ErrorCode.BAD_PAYLOAD)
        value = self.attribute({"do": "call", "name": "observe", "args": [agent]})
        return self.spaces.obs_in({agent: value})[agent]

    def attribute(self, request: dict[str, Any]) -> Any:
        return self._remote.call(Op.ATTR, [request])[0]

    def render(self, reset: Callable[[], Any]) -> Any:
        return self._remote.request_reset(Op.RENDER, lambda: [None], reset)[0]

    def close(self) -> None:
        self._remote.close()

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
from ..protocol.errors import ErrorCode, ProtocolError, RelayUnavailableError
from ..protocol.frames import Op
from ..protocol.space_values import agent_converters, convert_agents
from .answers import malformed
from .remote_env import RECONNECTED
from .session import TrainerSession
from .shards import SKIP, Shards

ALL = "__all__"  # RLlib: the key of terminateds and truncateds that ends the whole episode
COMMON = "__common__"  # RLlib: the infos key shared by all agents
_NUMBERS = (bool, int, float, np.bool_, np.number)
_FACTORIES = (None, int, float, bool, dict)  # what a defaultdict in an answer may make for a missing agent


class Agents:
    """A multi-agent env's agents and spaces, and the checks its answers pass."""

    def __init__(self, spaces: AgentSpaces) -> None:
        self.possible_agents = list(spaces.possible_agents)
        self.observation_spaces = dict(spaces.observation_spaces)
        self.action_spaces = dict(spaces.action_spaces)
        self._known = frozenset(self.possible_agents)
        self._obs_values = agent_converters(self.observation_spaces)
        self._action_values = agent_converters(self.action_spaces)

    def is_agent(self, value: Any) -> bool:
        """``value`` is one of the env's agents (checked by type first: a hostile list is unhashable)."""
        return type(value) in (str, int) and value in self._known

    def live(self, value: Any) -> list[Any]:
        if (
            not isinstance(value, list)
            or len(value) > len(self._known)
            or not all(self.is_agent(aid) for aid in value)
            or len(set(value)) != len(value)
        ):
            raise malformed("the live agents must be a list of distinct possible agents")
        return value

    def per_agent(self, value: Any, what: str, extra: str | None = None) -> dict[Any, Any]:
        """A map keyed by possible agents (and ``extra``, RLlib's ``__all__`` or ``__common__``).
        A defaultdict may only make numbers or maps for missing agents (its factory is data too)."""
        if (
            isinstance(value, dict)
            and (self._known.issuperset(value) or (extra in value and len(value.keys() - self._known) == 1))
            and getattr(value, "default_factory", None) in _FACTORIES
        ):
            return value
        raise malformed(f"{what} must be a map keyed by the env's agents")

    def numbers(self, value: Any, what: str, extra: str | None = None) -> dict[Any, Any]:
        """A per-agent map of rewards or flags."""
        self.per_agent(value, what, extra)
        if not all(isinstance(v, _NUMBERS) for v in value.values()):
            raise malformed(f"{what} must hold numbers")
        return value

    def infos(self, value: Any) -> dict[Any, Any]:
        """Per-agent infos: a map per agent (and RLlib's ``__common__``)."""
        self.per_agent(value, "infos", COMMON)
        if not all(isinstance(v, dict) for v in value.values()):
            raise malformed("each agent's info must be a map")
        return value

    def obs_in(self, value: Any) -> dict[Any, Any]:
        return convert_agents(self._obs_values, self.per_agent(value, "observations"), "from_wire")

    def actions_out(self, actions: Any) -> Any:
        if not isinstance(actions, dict):
            raise TypeError(f"actions must be a map of agent ids to actions, got {type(actions).__name__}")
        return convert_agents(self._action_values, actions, "to_wire")

    def reset_answer(self, value: Any) -> tuple[dict[Any, Any], dict[Any, Any], list[Any]]:
        if not isinstance(value, list) or len(value) != 3:
            raise malformed("a multi-agent reset answers [observations, infos, agents]")
        return self.obs_in(value[0]), self.infos(value[1]), self.live(value[2])

    def step_answer(self, value: Any, *, all_key: bool) -> tuple[Any, ...]:
        """A step's five maps and the live agents (``all_key``: RLlib's, whose terminations
        must say ``__all__``, as its vector env reads it)."""
        if not isinstance(value, list) or len(value) != 6:
            raise malformed("a multi-agent step answers five maps and the live agents")
        obs, rewards, terminated, truncated, infos, live = value
        self.numbers(rewards, "rewards")
        for name, flags in (("terminations", terminated), ("truncations", truncated)):
            self.numbers(flags, name, ALL)
        if all_key and ALL not in terminated:
            raise malformed("an RLlib env's terminations must hold '__all__'")
        return self.obs_in(obs), rewards, terminated, truncated, self.infos(infos), self.live(live)


_RESET_ANEW = {"reset": {"seed": None, "options": None}}


def _truncated(obs: dict[Any, Any], infos: dict[Any, Any], all_key: bool) -> tuple[Any, ...]:
    """A step of an env that was made again: the old episode ends, truncated, at the new one's
    first observations (as a single-agent ``RemoteEnv`` reports it)."""
    flags = {aid: False for aid in obs}
    return (
        obs,
        {aid: 0.0 for aid in obs},
        flags | ({ALL: False} if all_key else {}),
        {aid: True for aid in obs} | ({ALL: True} if all_key else {}),
        {aid: {**infos.get(aid, {}), RECONNECTED: True} for aid in obs},
    )


class _MultiAgent:
    """Multi-agent envs of one kind made on the simulators. ``make`` names the env:
    ``{"creator": ...}`` (an RLlib creator) or ``{"factory": ...}`` (a function called
    with keyword arguments)."""

    def __init__(self, session: TrainerSession, name: str, num_envs: int, make: dict[str, Any], kind: str) -> None:
        self.name = name
        self._remote = Shards(session, name, num_envs, {**make, "agents": kind}, vector=kind == "parallel")
        description = self._remote.description
        assert description.agents is not None  # the session checked the kind made
        self.spaces = Agents(description.agents)
        self.metadata = dict(description.metadata)
        self.render_mode = description.render_mode

    def _made_agents(self) -> list[list[Any]]:
        """Each env's live agents, as the simulators described them when they made the envs."""
        return [self.spaces.live(list(live)) for m in self._remote.made for live in m.description.agents.agents]

    def close(self) -> None:
        self._remote.close()


class AgentEnvs(_MultiAgent):
    """``num_envs`` parallel multi-agent envs over the simulators."""

    def __init__(self, session: TrainerSession, name: str, num_envs: int, make: dict[str, Any]) -> None:
        super().__init__(session, name, num_envs, make, "parallel")
        self.num_envs = num_envs
        self.agents = self._made_agents()
        self._lost: set[int] = set()  # envs made again on a new connection and not reset since

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

        def per_shard() -> list[Any]:
            return self._per_shard([None if s is SKIP else {"seed": s, "options": options} for s in seeds])

        generation = self._remote.generation
        answers = self._joined(self._remote.request_anew(Op.RESET, per_shard(), per_shard))
        if self._remote.generation != generation:  # made again: the envs not reset here lost their episodes
            self._made_again()
        out: list[Any] = []
        for i, (seed, answer) in enumerate(zip(seeds, answers)):
            if seed is SKIP:
                out.append(None)
                continue
            if answer is None:
                raise malformed("an env asked to reset did not answer")
            obs, infos, self.agents[i] = self.spaces.reset_answer(answer)
            self._lost.discard(i)
            out.append((obs, infos))
        return out

    def _made_again(self) -> None:
        """Every env is new: each one's next step reports its old episode truncated."""
        self.agents = self._made_agents()
        self._lost = set(range(self.num_envs))

    def step(self, entries: list[Any], *, all_key: bool) -> list[tuple[Any, ...] | None]:
        """Per env: None, ``{"step": actions}`` or ``{"reset": {...}}``. Each answer is a
        step's five maps or a reset's two. An env made again on a new connection (during
        this call or before) is reset instead of stepped, and its episode reported
        truncated (``all_key``: with RLlib's ``__all__``)."""
        for _ in range(2):
            lost = {i for i, e in enumerate(entries) if e is not None and "step" in e and i in self._lost}
            wire = [
                _RESET_ANEW if i in lost else {"step": self.spaces.actions_out(e["step"])} if e and "step" in e else e
                for i, e in enumerate(entries)
            ]
            answers = self._remote.request(Op.STEP, self._per_shard(wire))
            if answers is not None:
                break
            self._made_again()
        else:
            raise RelayUnavailableError(f"the relay connection of {self.name!r} was lost twice in one call")
        out: list[Any] = []
        for i, (entry, answer) in enumerate(zip(entries, self._joined(answers))):
            if entry is None:
                out.append(None)
            elif answer is None:
                raise malformed("an env asked to step did not answer")
            elif "step" in entry and i not in lost:
                *result, self.agents[i] = self.spaces.step_answer(answer, all_key=all_key)
                out.append(tuple(result))
            else:
                obs, infos, self.agents[i] = self.spaces.reset_answer(answer)
                self._lost.discard(i)
                out.append(_truncated(obs, infos, all_key) if i in lost else (obs, infos))
        return out

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


class AgentTurns(_MultiAgent):
    """One PettingZoo AEC env on a simulator; each answer is the turn that follows."""

    def __init__(self, session: TrainerSession, name: str, make: dict[str, Any]) -> None:
        super().__init__(session, name, 1, make, "aec")
        self.agents = self._made_agents()[0]

    def turn(self, value: Any) -> dict[str, Any]:
        """A reset's or step's answer, checked: the turn the trainer's env now shows."""
        if not isinstance(value, dict):
            raise malformed("an AEC answer must be a map")
        spaces = self.spaces
        live = spaces.live(value.get("agents"))
        selected = value.get("selected")
        if selected is not None and not spaces.is_agent(selected):
            raise malformed("the selected agent must be one of the env's agents")
        turn = {"agents": live, "selected": selected}
        for key in ("rewards", "cumulative", "terminations", "truncations"):
            turn[key] = spaces.numbers(value.get(key), key)
        turn["infos"] = spaces.infos(value.get("infos"))
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

"""Layer 5: multi-agent envs a simulator hosts.

Two kinds, chosen by the trainer's make request (``"agents"``):

* ``"parallel"``: every live agent acts at once. An RLlib ``MultiAgentEnv``
  and a PettingZoo ``ParallelEnv`` both fit: ``reset`` gives per-agent maps of
  observations and infos, ``step`` takes a map of actions and gives five maps.
  A shard holds ``num_envs`` such envs; one request carries an entry per env
  (step it, reset it, or leave it alone), so a vector step of any number of
  envs and agents is one frame per simulator.
* ``"aec"``: a PettingZoo ``AECEnv``, one agent at a time. Each answer carries
  what the trainer's ``last()`` needs (the selected agent, its observation, and
  every per-agent map), so an ``agent_iter`` loop is one frame per step.

Nothing here imports Ray or PettingZoo: the envs are used by their shape,
and PettingZoo's own converters are imported only when a factory made the
other kind than the one asked for. Agent ids travel as map keys, so they
must be strings or integers.
"""

from __future__ import annotations

from typing import Any

from gymnasium import spaces

from ..protocol.codec import wire_safe
from ..protocol.compression import Compression, negotiate
from ..protocol.errors import ErrorCode, ProtocolError, UnsupportedError
from ..protocol.limits import MAX_AGENTS, MAX_MESSAGE
from ..protocol.replay import AnswerMemory
from ..protocol.space_values import agent_converters, convert_agents
from ..protocol.spaces import space_to_wire
from .allowlist import Allowlist
from .attributes import API_CALLS, call_arguments, check_env_method, public_name
from .creators import CreatorContext, creator_ints
from .entry_points import plain_kwargs, resolve_entry_point

KINDS = ("parallel", "aec")


def _is_aec(env: Any) -> bool:
    """By its class: an AEC env's attributes (``agent_selection``) exist only after a reset."""
    return all(callable(getattr(type(env), name, None)) for name in ("observe", "last", "agent_iter"))


def _is_parallel(env: Any) -> bool:
    return hasattr(env, "possible_agents") and callable(getattr(env, "step", None)) and not _is_aec(env)


def as_kind(env: Any, kind: str, target: str) -> Any:
    """``env`` as the kind the trainer asked for: PettingZoo's own conversion when a
    factory made the other kind, else a clear refusal."""
    if kind == "parallel" and _is_aec(env):
        from pettingzoo.utils.conversions import aec_to_parallel  # an AEC env implies PettingZoo is here

        try:
            return aec_to_parallel(env)
        except AssertionError as exc:  # PettingZoo refuses AEC envs that are not parallelizable
            raise UnsupportedError(
                f"{target!r} made an AEC env that PettingZoo cannot convert to a parallel env ({exc}); "
                "use remoterl_ray.pettingzoo.env(...) for it"
            ) from None
    if kind == "aec" and _is_parallel(env) and callable(getattr(env, "observation_space", None)):
        from pettingzoo.utils.conversions import parallel_to_aec  # a PettingZoo ParallelEnv

        return parallel_to_aec(env)
    if (kind == "parallel" and _is_parallel(env)) or (kind == "aec" and _is_aec(env)):
        return env
    raise TypeError(
        f"{target!r:.200} returned a {type(env).__name__}, not a multi-agent env "
        f"({'a PettingZoo AECEnv' if kind == 'aec' else 'an RLlib MultiAgentEnv or a PettingZoo ParallelEnv'})"
    )


def agent_ids(env: Any, what: str = "possible_agents") -> list[Any]:
    """``env.possible_agents`` (or ``agents``) as a list of ids that can travel."""
    ids = getattr(env, what, None)
    if ids is None:
        return []
    ids = list(ids)
    if len(ids) > MAX_AGENTS:
        raise UnsupportedError(f"the env has {len(ids)} {what}; at most {MAX_AGENTS} can be served remotely")
    for aid in ids:
        if isinstance(aid, bool) or not isinstance(aid, (str, int)):
            raise UnsupportedError(
                f"agent id {aid!r:.60} is a {type(aid).__name__}; remote envs take string or integer agent ids"
            )
    return ids


def agent_space(env: Any, kind: str, aid: Any) -> spaces.Space:
    """An agent's observation (``kind="observation"``) or action space, asked the way
    the env answers: RLlib's ``get_observation_space``, else PettingZoo's method."""
    getter = getattr(env, f"get_{kind}_space", None)
    if callable(getter):
        return getter(aid)
    return getattr(env, f"{kind}_space")(aid)


class AgentSpaces:
    """Per-agent spaces, and the converters for samples the codec cannot carry."""

    def __init__(self, env: Any) -> None:
        self.possible_agents = agent_ids(env)
        if not self.possible_agents:
            raise UnsupportedError(
                f"{type(env).__name__} names no possible_agents; a remote multi-agent env must list every "
                "agent that may ever act (its spaces are sent up front)"
            )
        self.observation = {aid: agent_space(env, "observation", aid) for aid in self.possible_agents}
        self.action = {aid: agent_space(env, "action", aid) for aid in self.possible_agents}
        self._obs_values = agent_converters(self.observation)
        self._action_values = agent_converters(self.action)

    def to_wire(self) -> dict[str, Any]:
        return {
            "possible_agents": self.possible_agents,
            "observation_spaces": [space_to_wire(self.observation[aid]) for aid in self.possible_agents],
            "action_spaces": [space_to_wire(self.action[aid]) for aid in self.possible_agents],
        }

    def obs_out(self, obs: Any) -> Any:
        """A map of observations as it travels."""
        return convert_agents(self._obs_values, obs, "to_wire")

    def action_in(self, actions: Any) -> Any:
        return convert_agents(self._action_values, actions, "from_wire")


def _reset_arg(arg: Any) -> tuple[Any, Any]:
    if not isinstance(arg, dict):
        raise ProtocolError("a reset entry must be a map", code=ErrorCode.BAD_PAYLOAD)
    seed, options = arg.get("seed"), arg.get("options")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ProtocolError("reset seed must be an integer or None", code=ErrorCode.BAD_PAYLOAD)
    if options is not None and not isinstance(options, dict):
        raise ProtocolError("reset options must be a map", code=ErrorCode.BAD_PAYLOAD)
    return seed, options


def _entries(arg: Any, num_envs: int, op: str) -> list[Any]:
    if not isinstance(arg, list) or len(arg) != num_envs:
        raise ProtocolError(f"{op} expects a list of {num_envs} entries", code=ErrorCode.BAD_PAYLOAD)
    return arg


def attribute(env: Any, arg: dict[str, Any], *, allow_any: bool) -> Any:
    """An attribute request on a multi-agent env, by plain attribute access (PettingZoo
    envs have no Gymnasium wrapper-attribute API). Only ``API_CALLS`` are called when
    the simulator keeps env attributes to itself (``--no-env-attributes``)."""
    action = arg.get("do")
    name = public_name(arg.get("name"))
    if not allow_any and not (action == "call" and name in API_CALLS):
        raise UnsupportedError(
            "this simulator does not let trainers call env methods or get and set env attributes "
            "(it was started with --no-env-attributes)"
        )
    if action not in ("get", "has", "set", "call"):
        raise ProtocolError("malformed attribute request", code=ErrorCode.BAD_PAYLOAD)
    if action == "has":
        return hasattr(env, name)
    if action == "set":
        setattr(env, name, arg.get("value"))
        return None
    check_env_method([env], name)
    value = getattr(env, name)
    if action == "get" or not callable(value):  # "call" of a plain attribute reads it, as RLlib's vector env does
        return value
    args, kwargs = call_arguments(arg)
    return value(*args, **kwargs)


class _HostedKind:
    """Multi-agent envs of one kind on one channel (``EnvTable`` hosts them as it hosts a
    ``Hosted``: same fields and ops); ``envs[0]`` is what spaces and metadata come from."""

    kind: str
    vector: bool

    def __init__(self, envs: list[Any], *, token: str | None = None, peer_max_message: int = 0) -> None:
        self.envs = envs
        self.env = envs[0]
        self.num_envs = len(envs)
        self.token = token
        self.memory = AnswerMemory() if token is not None else None
        self.peer_max_message = peer_max_message
        self.compression: Compression | None = None
        self.reads_defaultdicts = False  # set at make, as for ``Hosted``
        self.spaces = AgentSpaces(self.env)

    def agree_compression(self, asked: Any, readable: Any) -> None:
        observation = spaces.Tuple(tuple(self.spaces.observation.values()))
        self.compression = negotiate(asked, readable, observation, getattr(self.env, "render_mode", None))

    def describe(self, max_message: int = MAX_MESSAGE) -> dict[str, Any]:
        return {
            "agents": {"kind": self.kind, **self.spaces.to_wire(), "agents": [agent_ids(e, "agents") for e in self.envs]},
            "metadata": wire_safe(dict(getattr(self.env, "metadata", {}) or {})),
            "render_mode": getattr(self.env, "render_mode", None),
            "num_envs": self.num_envs,
            "compression": None if self.compression is None else self.compression.to_wire(),
            "max_message": max_message,
        }

    def close(self) -> None:
        for env in self.envs:
            env.close()


class HostedAgents(_HostedKind):
    """``num_envs`` parallel multi-agent envs on one channel."""

    kind, vector = "parallel", True

    def _reset(self, env: Any, arg: Any) -> list[Any]:
        seed, options = _reset_arg(arg)
        obs, infos = env.reset(seed=seed, options=options)
        return [self.spaces.obs_out(obs), infos, agent_ids(env, "agents")]

    def _step(self, env: Any, actions: Any) -> list[Any]:
        if not isinstance(actions, dict):
            raise ProtocolError("a step entry's actions must be a map of agent ids", code=ErrorCode.BAD_PAYLOAD)
        obs, rewards, terminated, truncated, infos = env.step(self.spaces.action_in(actions))
        return [self.spaces.obs_out(obs), rewards, terminated, truncated, infos, agent_ids(env, "agents")]

    def reset(self, arg: Any) -> list[Any]:
        """Per env: None (left alone) or ``{"seed", "options"}``; answers ``[obs, infos, agents]``."""
        return [None if a is None else self._reset(env, a) for env, a in zip(self.envs, _entries(arg, self.num_envs, "reset"))]

    def step(self, arg: Any) -> list[Any]:
        """Per env: None, ``{"step": actions}`` or ``{"reset": {...}}`` (an autoreset in
        the same frame); answers a step's five maps and the live agents, or a reset's."""
        out: list[Any] = []
        for env, entry in zip(self.envs, _entries(arg, self.num_envs, "step")):
            if entry is None:
                out.append(None)
            elif isinstance(entry, dict) and "step" in entry:
                out.append(self._step(env, entry["step"]))
            elif isinstance(entry, dict) and "reset" in entry:
                out.append(self._reset(env, entry["reset"]))
            else:
                raise ProtocolError("a step entry must be None, {'step': ...} or {'reset': ...}", code=ErrorCode.BAD_PAYLOAD)
        return out

    def attribute(self, arg: dict[str, Any], *, allow_any: bool) -> Any:
        """Of the shard's env at ``arg["index"]`` (PettingZoo's ``state()``, say)."""
        index = arg.get("index", 0)
        if type(index) is not int or not 0 <= index < self.num_envs:
            raise ProtocolError(f"index must be an env index below {self.num_envs}", code=ErrorCode.BAD_PAYLOAD)
        return attribute(self.envs[index], arg, allow_any=allow_any)

    def render(self) -> list[Any]:
        return [env.render() for env in self.envs]


class HostedTurns(_HostedKind):
    """One PettingZoo ``AECEnv``: agents act in turn."""

    kind, vector = "aec", False

    def turn(self) -> dict[str, Any]:
        """What the trainer's ``last()``, ``agents`` and per-agent maps read after a reset or step."""
        env = self.env
        live = agent_ids(env, "agents")
        selected = getattr(env, "agent_selection", None)  # read as it is, also once every agent is done
        observed = selected in live  # what last() reads next; a done env's is asked for if wanted
        return {
            "agents": live,
            "selected": selected,
            "observed": observed,
            "observation": self.spaces.obs_out({selected: env.observe(selected)})[selected] if observed else None,
            "rewards": dict(env.rewards),
            "cumulative": dict(getattr(env, "_cumulative_rewards", {}) or {}),
            "terminations": dict(env.terminations),
            "truncations": dict(env.truncations),
            "infos": dict(env.infos),
        }

    def reset(self, arg: Any) -> dict[str, Any]:
        seed, options = _reset_arg(arg or {})
        self.env.reset(seed=seed, options=options)
        return self.turn()

    def step(self, arg: Any) -> dict[str, Any]:
        if not isinstance(arg, dict) or "action" not in arg:
            raise ProtocolError("an AEC step must be {'action': ...}", code=ErrorCode.BAD_PAYLOAD)
        action = arg["action"]
        selected = getattr(self.env, "agent_selection", None)
        if action is not None and selected in self.spaces.action:
            action = self.spaces.action_in({selected: action})[selected]
        self.env.step(action)
        return self.turn()

    def attribute(self, arg: dict[str, Any], *, allow_any: bool) -> Any:
        if arg.get("do") == "call" and arg.get("name") == "observe":  # converted as every observation is
            agent = (arg.get("args") or [None])[0]
            if agent not in self.spaces.observation:
                raise ProtocolError(f"no agent {agent!r:.60} in this env", code=ErrorCode.BAD_PAYLOAD)
            return self.spaces.obs_out({agent: self.env.observe(agent)})[agent]
        return attribute(self.env, arg, allow_any=allow_any)

    def render(self) -> Any:
        return self.env.render()


def _builder(allowlist: Allowlist, arg: dict[str, Any], first_index: int) -> tuple[str, Any]:
    """The target named and a function making the env of vector index ``i``: an RLlib
    creator called with its env context, or a factory called with keyword arguments."""
    creator = arg.get("creator")
    if creator is not None:
        if not isinstance(creator, dict):
            raise ProtocolError("creator must be a map", code=ErrorCode.BAD_PAYLOAD)
        env_config = plain_kwargs(creator.get("env_config"), "creator env_config")
        make = resolve_entry_point(allowlist, creator.get("target"), what="env creator", agents=True)
        worker_index, num_workers = creator_ints(creator)

        def build(i: int) -> Any:
            context = CreatorContext(
                env_config, worker_index=worker_index, num_workers=num_workers, vector_index=first_index + i
            )
            return make(context)

        return str(creator.get("target")), build
    factory = arg.get("factory")
    if not isinstance(factory, dict):
        raise ProtocolError("a multi-agent make names a creator or a factory", code=ErrorCode.BAD_PAYLOAD)
    kwargs = plain_kwargs(factory.get("kwargs"), "factory kwargs")
    make = resolve_entry_point(allowlist, factory.get("target"), what="env factory", agents=True)
    return str(factory.get("target")), lambda i: make(**kwargs)


def make_agents(
    allowlist: Allowlist,
    arg: dict[str, Any],
    *,
    kind: Any,
    vector: bool,
    num_envs: int,
    token: str | None,
    peer_max_message: int,
) -> HostedAgents | HostedTurns:
    """The multi-agent env(s) a make request asks for, checked for the kind asked."""
    if kind not in KINDS or (kind == "aec") == vector:
        raise ProtocolError(
            "agents must be 'parallel' (a make_vec request) or 'aec' (a make request)", code=ErrorCode.BAD_PAYLOAD
        )
    first_index = arg.get("first_index") or 0
    if not isinstance(first_index, int) or first_index < 0:
        raise ProtocolError("first_index must be a non-negative integer", code=ErrorCode.BAD_PAYLOAD)
    target, build = _builder(allowlist, arg, first_index)
    envs: list[Any] = []
    try:
        for i in range(num_envs):
            env = build(i)
            try:
                envs.append(as_kind(env, kind, target))
            except BaseException:
                envs.append(env)  # closed below with the others
                raise
        if kind == "aec":
            return HostedTurns(envs, token=token, peer_max_message=peer_max_message)
        return HostedAgents(envs, token=token, peer_max_message=peer_max_message)
    except BaseException:
        for env in envs:
            try:
                env.close()
            except Exception:  # the first failure is what the trainer needs to hear
                pass
        raise

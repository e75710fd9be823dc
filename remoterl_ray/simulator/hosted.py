"""Layer 5: the envs a simulator hosts, one per channel, and the ops on them.

Each op takes the decoded request argument and returns a codec-safe value.
Errors are raised as ``RemoteRLError`` subclasses with a stable code; any
other exception from the env itself becomes ``env_error`` carrying the
exception's type, which the trainer re-raises.

Registrations mirrored by a trainer never enter Gymnasium's registry: each is
kept for the channel it came on and dropped with that channel, so it cannot
change what the simulator makes for anyone else, and an id the registry
already resolves always means the simulator's own env.

An env made with a resume token (``docs/protocol.md``, resuming) outlives its
channel: when the channel pauses, the env is *suspended* under its token until
the channel resumes under a new id or the resume window runs out.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

import gymnasium as gym
from gymnasium.envs.registration import EnvSpec, find_highest_version, parse_env_id

from ..protocol import codec
from ..protocol.codec import wire_safe
from ..protocol.compression import Compression, negotiate
from ..protocol.errors import (
    UnsupportedError,
    EnvClosedError,
    ErrorCode,
    NoSimulatorError,
    ProtocolError,
    RegistrationRefusedError,
    UnknownEnvError,
    exception_type_name,
)
from ..protocol.frames import Op
from ..protocol.limits import MAX_MESSAGE, MIN_MESSAGE
from ..protocol.messages import Claim
from ..protocol.replay import AnswerMemory
from ..protocol.space_values import batch_converter, convert_final_obs, sample_converter
from ..protocol.spaces import space_to_wire
from .agents import HostedAgents, HostedTurns, make_agents
from .allowlist import Allowlist
from .attributes import encode_attribute_result, handle_attribute
from .creators import make_with_creator
from .entry_points import plain_kwargs, resolve_entry_point
from .vectors import PerEnvInfos, answer_infos_per_env, make_vector


def _require_dict(arg: Any, op: str) -> dict[str, Any]:
    if not isinstance(arg, dict):
        raise ProtocolError(f"{op} expects a map argument, got {type(arg).__name__}", code=ErrorCode.BAD_PAYLOAD)
    return arg


def _env_id(arg: dict[str, Any]) -> str:
    env_id = arg.get("id")
    if not isinstance(env_id, str) or not env_id or len(env_id) > 300:
        raise ProtocolError("env id must be a non-empty string", code=ErrorCode.BAD_PAYLOAD)
    return env_id


def _kwargs(arg: dict[str, Any], key: str = "kwargs") -> dict[str, Any]:
    return plain_kwargs(arg.get(key), key)


# The EnvSpec fields a registration may set, with the types each accepts (None: unset).
_SPEC_FIELDS: dict[str, tuple[type, ...]] = {
    "max_episode_steps": (int,),
    "reward_threshold": (int, float),
    "nondeterministic": (bool,),
    "order_enforce": (bool,),
    "disable_env_checker": (bool,),
}


def _spec_fields(arg: dict[str, Any]) -> dict[str, Any]:
    """The registration's allowed spec fields, type-checked; other fields are ignored."""
    spec = plain_kwargs(arg.get("spec"), "registration spec", registration=True)
    fields = {}
    for name, types in _SPEC_FIELDS.items():
        value = spec.get(name)
        if value is None:
            continue
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise ProtocolError(f"registration spec {name} has the wrong type", code=ErrorCode.BAD_PAYLOAD)
        fields[name] = value
    return fields


def in_simulator_registry(env_id: str) -> bool:
    """True if Gymnasium's own lookup finds ``env_id`` here: the id itself, or
    for an unversioned id any version of it (``make`` picks the latest)."""
    if env_id in gym.registry:
        return True
    try:
        namespace, name, version = parse_env_id(env_id)
    except gym.error.Error:
        return False
    return version is None and find_highest_version(namespace, name) is not None


def _spec_of(env: Any) -> dict[str, Any] | None:
    """The env's ``EnvSpec`` as the trainer rebuilds it: every field that is data
    (entry points only as their "module:attr" strings, kwargs that can travel)."""
    spec = getattr(env, "spec", None)
    if spec is None:
        return None
    return {
        "id": spec.id,
        "entry_point": spec.entry_point if isinstance(spec.entry_point, str) else None,
        "vector_entry_point": spec.vector_entry_point if isinstance(spec.vector_entry_point, str) else None,
        "max_episode_steps": spec.max_episode_steps,
        "reward_threshold": spec.reward_threshold,
        "nondeterministic": bool(spec.nondeterministic),
        "order_enforce": bool(spec.order_enforce),
        "disable_env_checker": bool(spec.disable_env_checker),
        "kwargs": wire_safe(dict(spec.kwargs)),
    }


class Registrations:
    """Mirrored registrations as specs per channel, bounded per channel and in all.

    A trainer mirrors one registration per make, so a few per channel is
    plenty; the total bounds what trainers can make a simulator keep.
    """

    def __init__(self, per_channel: int = 4, total: int = 1024) -> None:
        self.per_channel = per_channel
        self.total = total
        self.count = 0
        self.by_channel: dict[int, dict[str, EnvSpec]] = {}

    def add(self, channel: int, spec: EnvSpec) -> None:
        specs = self.by_channel.get(channel, {})
        if spec.id not in specs:
            if len(specs) >= self.per_channel:
                raise RegistrationRefusedError(
                    f"a channel may hold at most {self.per_channel} registrations on this simulator"
                )
            if self.count >= self.total:
                raise RegistrationRefusedError(f"this simulator holds at most {self.total} registrations")
            self.count += 1
        self.by_channel.setdefault(channel, specs)[spec.id] = spec

    def get(self, channel: int, env_id: str) -> EnvSpec | None:
        return self.by_channel.get(channel, {}).get(env_id)

    def drop(self, channel: int) -> None:
        self.count -= len(self.by_channel.pop(channel, {}))


_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,64}")


def _token(arg: dict[str, Any]) -> str | None:
    token = arg.get("resume")
    if token is not None and not (isinstance(token, str) and _TOKEN.fullmatch(token)):
        raise ProtocolError("resume must be a token of 16 to 64 URL-safe characters", code=ErrorCode.BAD_PAYLOAD)
    return token


class Hosted:
    """One hosted env (``vector=False``) or vector env shard (``vector=True``)."""

    def __init__(
        self,
        env: Any,
        *,
        vector: bool,
        num_envs: int,
        mode: str | None = None,
        token: str | None = None,
        peer_max_message: int = 0,
    ) -> None:
        """``peer_max_message``: the largest message the trainer takes (0: one frame)."""
        self.env = env
        self.vector = vector
        self.num_envs = num_envs
        self.mode = mode  # the vectorization mode the shard was made in
        self.token = token  # resume token: the env outlives its channel (None: it does not)
        self.memory = AnswerMemory() if token is not None else None  # answers to give again after a resume
        self.peer_max_message = peer_max_message
        self.compression: Compression | None = None  # agreed at make (``negotiate``)
        self.reads_defaultdicts = False  # the trainer reads ext 6 (it listed codec.READS_DEFAULTDICT at make)
        # Samples the codec cannot carry as they are (Graph, registered user spaces); None: nothing to do.
        if vector:
            self.obs_values = batch_converter(env.single_observation_space)
            self.action_values = batch_converter(env.single_action_space, num_envs)
            self.final_obs_values = sample_converter(env.single_observation_space)
        else:
            self.obs_values = sample_converter(env.observation_space)
            self.action_values = sample_converter(env.action_space)
            self.final_obs_values = None

    def _answer(self, result: tuple[Any, ...]) -> list[Any]:
        """A reset or step result as it travels: a list, its samples converted."""
        out = list(result)  # a list: the envelope needs no tuple marker
        if self.obs_values is not None:
            out[0] = self.obs_values.to_wire(out[0])
        if self.final_obs_values is not None:
            out[-1] = convert_final_obs(out[-1], self.final_obs_values.to_wire)
        return out

    def agree_compression(self, asked: Any, readable: Any) -> None:
        """Choose this channel's compression from the trainer's wish and this env's spaces."""
        env = self.env
        space = env.single_observation_space if self.vector else env.observation_space
        self.compression = negotiate(asked, readable, space, getattr(env, "render_mode", None))

    def describe(self, max_message: int = MAX_MESSAGE) -> dict[str, Any]:
        """What the trainer mirrors: spaces, metadata, spec; and what this channel agreed:
        its compression and the largest message this simulator takes."""
        env = self.env
        if self.vector:
            spaces = {
                "observation_space": space_to_wire(env.single_observation_space),
                "action_space": space_to_wire(env.single_action_space),
            }
            if getattr(env, "observation_mode", "same") == "different":  # batched from each env's own space
                envs = getattr(env, "envs", None)  # an async vector env's live in its processes
                each = [e.observation_space for e in envs] if envs is not None else env.get_attr("observation_space")
                spaces["observation_spaces"] = [space_to_wire(space) for space in each]
        else:
            spaces = {
                "observation_space": space_to_wire(env.observation_space),
                "action_space": space_to_wire(env.action_space),
            }
        return {
            **spaces,
            "metadata": wire_safe(dict(getattr(env, "metadata", {}) or {})),
            "spec": _spec_of(env),
            "render_mode": getattr(env, "render_mode", None),
            "num_envs": self.num_envs,
            "vectorization_mode": self.mode,
            "per_env_infos": isinstance(env, PerEnvInfos),
            "compression": None if self.compression is None else self.compression.to_wire(),
            "max_message": max_message,
        }

    def reset(self, arg: Any) -> Any:
        arg = _require_dict(arg or {}, "reset")
        options = arg.get("options")
        if options is not None and not isinstance(options, dict):
            raise ProtocolError("reset options must be a map", code=ErrorCode.BAD_PAYLOAD)
        return self._answer(self.env.reset(seed=arg.get("seed"), options=options))

    def step(self, action: Any) -> Any:
        # The env judges its actions, as it does locally (a vector env ignores the
        # action of an env it autoresets; MuJoCo envs take any Box action).
        if self.action_values is not None:
            action = self.action_values.from_wire(action)
        return self._answer(self.env.step(action))

    def render(self) -> Any:
        return self.env.render()

    def close(self) -> None:
        self.env.close()


class Suspended(NamedTuple):
    """An env whose channel paused, waiting for it to resume."""

    hosted: Hosted
    since: float  # time.monotonic() when its channel paused


class EnvTable:
    """All envs this simulator hosts, by channel, and those suspended, by token."""

    def __init__(
        self,
        allowlist: Allowlist,
        max_envs: int,
        *,
        allow_processes: bool = False,
        allow_attributes: bool = True,
        max_message: int = MAX_MESSAGE,
    ) -> None:
        """``allow_processes``: trainers may ask for ``vectorization_mode="async"``,
        which starts a process per env; off, such a request is refused.
        ``allow_attributes``: trainers may call public env methods and get or set
        public attributes (``call``/``get_attr``/``set_attr``, SB3's ``env_method``).
        ``max_message``: the largest request this simulator takes (said at make)."""
        self.allowlist = allowlist
        self.max_message = max_message
        self.max_envs = max_envs
        self.allow_processes = allow_processes
        self.allow_attributes = allow_attributes
        self.by_channel: dict[int, Hosted | HostedAgents | HostedTurns] = {}
        self.suspended: dict[str, Suspended] = {}
        self.registrations = Registrations()

    @property
    def hosted_envs(self) -> int:
        return sum(h.num_envs for h in self.by_channel.values()) + sum(
            s.hosted.num_envs for s in self.suspended.values()
        )

    # -- resuming -----------------------------------------------------------

    def suspend(self, channels: Iterable[int], now: float | None = None) -> list[Claim]:
        """These channels paused: their resumable envs wait under their tokens (the
        claims to send the relay are returned), the others are closed."""
        now = time.monotonic() if now is None else now
        claims = []
        for channel in list(channels):
            hosted = self.by_channel.get(channel)
            if hosted is None or hosted.token is None:
                self.close(channel)
                continue
            del self.by_channel[channel]
            self.registrations.drop(channel)  # only a make reads them
            self.suspended[hosted.token] = Suspended(hosted, now)
            claims.append(Claim(token=hosted.token, envs=hosted.num_envs))
        return claims

    def claims(self) -> list[Claim]:
        """Every suspended env's claim (sent again on each new connection)."""
        return [Claim(token=token, envs=s.hosted.num_envs) for token, s in self.suspended.items()]

    def rebind(self, token: str, channel: int) -> bool:
        """A suspended env's channel resumed as ``channel``; False if no env waits for ``token``."""
        suspended = self.suspended.get(token)
        if suspended is None or channel in self.by_channel:
            return False
        del self.suspended[token]
        self.by_channel[channel] = suspended.hosted
        return True

    def next_expiry(self, window: float) -> float | None:
        """When (``time.monotonic()``) the first suspended env's window runs out; None if none waits."""
        return min(s.since for s in self.suspended.values()) + window if self.suspended else None

    def expire(self, window: float, now: float | None = None) -> list[str]:
        """Close suspended envs that waited longer than ``window`` seconds; their tokens."""
        now = time.monotonic() if now is None else now
        gone = [token for token, s in self.suspended.items() if now - s.since > window]
        for token in gone:
            _close_quietly(self.suspended.pop(token).hosted)
        return gone

    def answer(self, op: int, channel: int, arg: Any, *, max_bytes: int) -> bytes:
        """Run one request; returns the answer's payload, its arrays compressed as the
        channel agreed (``max_bytes``: the most that can reach the trainer)."""
        result = self.handle(op, channel, arg)
        hosted = self.by_channel.get(channel)
        compression = None if hosted is None or op in (Op.MAKE, Op.MAKE_VEC, Op.SPACES) else hosted.compression
        plain_maps = hosted is None or not hosted.reads_defaultdicts
        if op == Op.ATTR:
            return encode_attribute_result(result, arg, max(max_bytes, hosted.peer_max_message if hosted else 0),
                                           compression, plain_maps=plain_maps)  # fmt: skip
        return codec.packb(result, compression, plain_maps=plain_maps)

    def handle(self, op: int, channel: int, arg: Any) -> Any:
        """Run one request; returns the answer value."""
        if op == Op.REGISTER:
            return self.register(channel, _require_dict(arg, "register"))
        if op in (Op.MAKE, Op.MAKE_VEC):
            return self.make(channel, _require_dict(arg, "make"), vector=op == Op.MAKE_VEC)
        hosted = self.by_channel.get(channel)
        if hosted is None:
            if op == Op.CLOSE:
                self.close(channel)  # drops the channel's registrations
                return None
            raise EnvClosedError(f"no env is open on channel {channel} (closed, or never made)")
        if op == Op.STEP:
            return hosted.step(arg)
        if op == Op.RESET:
            return hosted.reset(arg)
        if op == Op.RENDER:
            return hosted.render()
        if op == Op.SPACES:
            return hosted.describe(self.max_message)
        if op == Op.ATTR and not isinstance(hosted, Hosted):  # multi-agent: PettingZoo's methods by plain access
            return hosted.attribute(_require_dict(arg, "attr"), allow_any=self.allow_attributes)
        if op == Op.ATTR:
            if not self.allow_attributes:
                raise UnsupportedError(
                    "this simulator does not let trainers call env methods or get and set env attributes "
                    "(it was started with --no-env-attributes)"
                )
            return handle_attribute(
                hosted.env, _require_dict(arg, "attr"), vector=hosted.vector, num_envs=hosted.num_envs
            )
        if op == Op.CLOSE:
            self.close(channel)
            return None
        raise ProtocolError(f"unknown op {op}", code=ErrorCode.UNKNOWN_OP)

    def register(self, channel: int, arg: dict[str, Any]) -> dict[str, Any]:
        """Keep a trainer's registration for ``channel`` only; never touches Gymnasium's registry."""
        env_id = _env_id(arg)
        if ":" in env_id:
            raise RegistrationRefusedError(
                f"cannot register {env_id!r}: an id with ':' names a module for Gymnasium to import; "
                "register the id without it"
            )
        if in_simulator_registry(env_id):
            return {"registered": False, "reason": "already in this simulator's registry"}
        kwargs = plain_kwargs(arg.get("kwargs"), "registration kwargs", registration=True)
        fields = _spec_fields(arg)
        entry_point = resolve_entry_point(self.allowlist, arg.get("entry_point"))
        try:
            spec = EnvSpec(id=env_id, entry_point=entry_point, kwargs=kwargs, **fields)
        except gym.error.Error as exc:  # an id Gymnasium cannot parse
            raise RegistrationRefusedError(f"cannot register {env_id!r}: {exc}") from None
        self.registrations.add(channel, spec)
        return {"registered": True}

    def spec_for(self, channel: int, env_id: str) -> str | EnvSpec:
        """What ``make`` builds for ``env_id`` on ``channel``: the simulator's own
        registry entry (by id, left to Gymnasium), else the channel's registration."""
        if ":" in env_id or in_simulator_registry(env_id):
            self.allowlist.check_env_id(env_id)
            return env_id
        registered = self.registrations.get(channel, env_id)
        return env_id if registered is None else registered  # an unknown id: Gymnasium's make says so

    def make(self, channel: int, arg: dict[str, Any], *, vector: bool) -> dict[str, Any]:
        if channel in self.by_channel:
            raise ProtocolError(f"channel {channel} already hosts an env", code=ErrorCode.BAD_PAYLOAD)
        token = _token(arg)
        peer_max_message = arg.get("max_message", 0)  # absent: a trainer that takes one frame per message
        if not isinstance(peer_max_message, int) or (peer_max_message and peer_max_message < MIN_MESSAGE):
            raise ProtocolError(
                f"max_message must be an integer of at least {MIN_MESSAGE} bytes", code=ErrorCode.BAD_PAYLOAD
            )
        if token is not None and (
            token in self.suspended or any(h.token == token for h in self.by_channel.values())
        ):
            raise ProtocolError("that resume token is taken", code=ErrorCode.BAD_PAYLOAD)
        env_id = _env_id(arg)
        kwargs = _kwargs(arg)
        num_envs = 1
        if vector:
            num_envs = arg.get("num_envs")
            if not isinstance(num_envs, int) or num_envs < 1:
                raise ProtocolError("num_envs must be a positive integer", code=ErrorCode.BAD_PAYLOAD)
        if self.hosted_envs + num_envs > self.max_envs:
            raise NoSimulatorError(
                f"simulator is full: hosts {self.hosted_envs} of at most {self.max_envs} envs",
                code=ErrorCode.CAPACITY,
            )
        kind = arg.get("agents")
        if kind is not None:
            hosted: Hosted | HostedAgents | HostedTurns = make_agents(
                self.allowlist, arg, kind=kind, vector=vector, num_envs=num_envs, token=token,
                peer_max_message=peer_max_message,
            )  # fmt: skip
        else:
            env, mode = self._make_env(channel, arg, env_id, kwargs, vector=vector, num_envs=num_envs)
            try:
                hosted = Hosted(
                    env, vector=vector, num_envs=num_envs, mode=mode, token=token, peer_max_message=peer_max_message
                )
            except BaseException:
                env.close()
                raise
        try:
            hosted.agree_compression(arg.get("compression"), arg.get("codecs", []))
            hosted.reads_defaultdicts = _reads_defaultdicts(arg)
            description = hosted.describe(self.max_message)
        except BaseException:
            _close_quietly(hosted)
            raise
        self.by_channel[channel] = hosted
        return description

    def _make_env(
        self, channel: int, arg: dict[str, Any], env_id: str, kwargs: dict[str, Any], *, vector: bool, num_envs: int
    ) -> tuple[Any, str | None]:
        """The single-agent env or vector env shard a make asks for, and the mode it was made in."""
        spec = self.spec_for(channel, env_id)
        try:
            if vector and arg.get("creator") is not None:
                env = make_with_creator(
                    self.allowlist,
                    _require_dict(arg["creator"], "creator"),
                    num_envs=num_envs,
                    first_index=arg.get("first_index") or 0,
                    vector_kwargs=_kwargs(arg, "vector_kwargs"),
                )
                if arg.get("per_env_infos") is True:
                    answer_infos_per_env(env)
                return env, None
            if vector:
                return make_vector(
                    spec,
                    num_envs,
                    mode=arg.get("vectorization_mode"),
                    kwargs=kwargs,
                    vector_kwargs=_kwargs(arg, "vector_kwargs"),
                    per_env_infos=arg.get("per_env_infos") is True,
                    allow_processes=self.allow_processes,
                )
            return gym.make(spec, **kwargs), None
        except (gym.error.UnregisteredEnv, gym.error.DeprecatedEnv) as exc:  # NameNotFound etc. derive from it
            raise UnknownEnvError(str(exc), remote_type=exception_type_name(type(exc))) from None

    def close(self, channel: int) -> None:
        """Close the channel's env and forget its registrations (on close, detach or failure)."""
        self.registrations.drop(channel)
        hosted = self.by_channel.pop(channel, None)
        if hosted is not None:
            _close_quietly(hosted)

    def close_all(self) -> None:
        for channel in list(self.by_channel) + list(self.registrations.by_channel):
            self.close(channel)
        self.expire(-1.0)


def _reads_defaultdicts(arg: dict[str, Any]) -> bool:
    """The trainer listed ext 6 among what it reads (codecs: a short list of names)."""
    codecs = arg.get("codecs")
    return isinstance(codecs, list) and codec.READS_DEFAULTDICT in codecs[:8]


def _close_quietly(hosted: Hosted) -> None:
    try:
        hosted.close()
    except Exception:  # a failing close must not take the simulator down
        pass

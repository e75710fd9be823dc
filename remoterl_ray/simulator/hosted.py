"""Layer 5: the envs a simulator hosts, one per channel, and the ops on them.

Each op takes the decoded request argument and returns a codec-safe value.
Errors are raised as ``RemoteRLError`` subclasses with a stable code; any
other exception from the env itself becomes ``env_error`` carrying the
exception's type, which the trainer re-raises.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import gymnasium as gym

from ..protocol import codec
from ..protocol.errors import (
    EnvClosedError,
    ErrorCode,
    InvalidActionError,
    NoSimulatorError,
    ProtocolError,
    RemoteRLError,
    UnknownEnvError,
)
from ..protocol.frames import Op
from ..protocol.spaces import action_checker, space_to_wire
from .allowlist import Allowlist
from .creators import make_with_creator

_VECTOR_MODES = ("sync", "async", "vector_entry_point")


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
    kwargs = arg.get(key) or {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ProtocolError(f"{key} must be a map with string keys", code=ErrorCode.BAD_PAYLOAD)
    return kwargs


def _wire_safe(mapping: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``mapping`` that can travel (metadata may hold anything)."""
    out = {}
    for key, value in mapping.items():
        if isinstance(value, Enum):  # e.g. a vector env's autoreset_mode
            value = value.value
        try:
            codec.packb(value)
        except codec.EncodeError:
            continue
        out[str(key)] = value
    return out


def _spec_of(env: Any) -> dict[str, Any] | None:
    spec = getattr(env, "spec", None)
    if spec is None:
        return None
    return {
        "id": spec.id,
        "max_episode_steps": spec.max_episode_steps,
        "reward_threshold": spec.reward_threshold,
        "nondeterministic": bool(spec.nondeterministic),
    }


class Hosted:
    """One hosted env (``vector=False``) or vector env shard (``vector=True``)."""

    def __init__(self, env: Any, *, vector: bool, num_envs: int) -> None:
        self.env = env
        self.vector = vector
        self.num_envs = num_envs
        self.action_space = env.action_space
        self.check_action = action_checker(env.action_space)

    def describe(self) -> dict[str, Any]:
        env = self.env
        if self.vector:
            spaces = {
                "observation_space": space_to_wire(env.single_observation_space),
                "action_space": space_to_wire(env.single_action_space),
            }
        else:
            spaces = {
                "observation_space": space_to_wire(env.observation_space),
                "action_space": space_to_wire(env.action_space),
            }
        return {
            **spaces,
            "metadata": _wire_safe(dict(getattr(env, "metadata", {}) or {})),
            "spec": _spec_of(env),
            "render_mode": getattr(env, "render_mode", None),
            "num_envs": self.num_envs,
        }

    def reset(self, arg: Any) -> Any:
        arg = _require_dict(arg or {}, "reset")
        options = arg.get("options")
        if options is not None and not isinstance(options, dict):
            raise ProtocolError("reset options must be a map", code=ErrorCode.BAD_PAYLOAD)
        obs, info = self.env.reset(seed=arg.get("seed"), options=options)
        return [obs, info]  # a list: the envelope needs no tuple marker

    def step(self, action: Any) -> Any:
        if not self.check_action(action):
            raise InvalidActionError(
                f"action {action!r:.200} is not in the action space {self.action_space}"
            )
        return list(self.env.step(action))

    def render(self) -> Any:
        return self.env.render()

    def close(self) -> None:
        self.env.close()


class EnvTable:
    """All envs this simulator hosts, by channel."""

    def __init__(self, allowlist: Allowlist, max_envs: int) -> None:
        self.allowlist = allowlist
        self.max_envs = max_envs
        self.by_channel: dict[int, Hosted] = {}

    @property
    def hosted_envs(self) -> int:
        return sum(h.num_envs for h in self.by_channel.values())

    def handle(self, op: int, channel: int, arg: Any) -> Any:
        """Run one request; returns the answer value."""
        if op == Op.REGISTER:
            return self.register(_require_dict(arg, "register"))
        if op in (Op.MAKE, Op.MAKE_VEC):
            return self.make(channel, _require_dict(arg, "make"), vector=op == Op.MAKE_VEC)
        hosted = self.by_channel.get(channel)
        if hosted is None:
            if op == Op.CLOSE:
                return None
            raise EnvClosedError(f"no env is open on channel {channel} (closed, or never made)")
        if op == Op.STEP:
            return hosted.step(arg)
        if op == Op.RESET:
            return hosted.reset(arg)
        if op == Op.RENDER:
            return hosted.render()
        if op == Op.SPACES:
            return hosted.describe()
        if op == Op.CLOSE:
            self.close(channel)
            return None
        raise ProtocolError(f"unknown op {op}", code=ErrorCode.UNKNOWN_OP)

    def register(self, arg: dict[str, Any]) -> dict[str, Any]:
        env_id = _env_id(arg)
        if env_id in gym.registry:
            return {"registered": False, "reason": "already in this simulator's registry"}
        self.allowlist.check_env_id(env_id)
        entry_point = arg.get("entry_point")
        self.allowlist.check_entry_point(entry_point)
        kwargs = _kwargs(arg)
        allowed = {"max_episode_steps", "reward_threshold", "nondeterministic", "order_enforce", "disable_env_checker"}
        spec_args = {k: v for k, v in _kwargs(arg, "spec").items() if k in allowed}
        gym.register(id=env_id, entry_point=entry_point, kwargs=kwargs, **spec_args)
        return {"registered": True}

    def make(self, channel: int, arg: dict[str, Any], *, vector: bool) -> dict[str, Any]:
        if channel in self.by_channel:
            raise ProtocolError(f"channel {channel} already hosts an env", code=ErrorCode.BAD_PAYLOAD)
        env_id = _env_id(arg)
        kwargs = _kwargs(arg)
        self.allowlist.check_env_id(env_id)
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
        try:
            if vector and arg.get("creator") is not None:
                env = make_with_creator(
                    self.allowlist,
                    _require_dict(arg["creator"], "creator"),
                    num_envs=num_envs,
                    first_index=arg.get("first_index") or 0,
                    vector_kwargs=_kwargs(arg, "vector_kwargs"),
                )
            elif vector:
                mode = arg.get("vectorization_mode") or "sync"
                if mode not in _VECTOR_MODES:
                    raise ProtocolError(f"unknown vectorization mode {mode!r}", code=ErrorCode.BAD_PAYLOAD)
                env = gym.make_vec(
                    env_id,
                    num_envs=num_envs,
                    vectorization_mode=mode,
                    vector_kwargs=_kwargs(arg, "vector_kwargs"),
                    **kwargs,
                )
            else:
                env = gym.make(env_id, **kwargs)
        except (gym.error.UnregisteredEnv, gym.error.DeprecatedEnv) as exc:  # NameNotFound etc. derive from it
            raise UnknownEnvError(str(exc), remote_type=type(exc).__name__) from None
        hosted = Hosted(env, vector=vector, num_envs=num_envs)
        try:
            description = hosted.describe()
        except RemoteRLError:
            hosted.close()
            raise
        self.by_channel[channel] = hosted
        return description

    def close(self, channel: int) -> None:
        hosted = self.by_channel.pop(channel, None)
        if hosted is not None:
            try:
                hosted.close()
            except Exception:  # a failing close must not take the simulator down
                pass

    def close_all(self) -> None:
        for channel in list(self.by_channel):
            self.close(channel)


def remote_type_of(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"

"""Layer 5: a trainer's ``call`` / ``get_attr`` / ``set_attr`` on the envs a simulator hosts.

Gymnasium's vector envs and SB3's VecEnvs let the trainer reach methods and
attributes of the envs (curriculum setters, counters). Here that reaches the
envs on the simulator, within the threat model: only public names (no
leading underscore, a plain identifier), no wrapper-reflection helpers that
would take a private name as an argument, arguments and values are decoded
payload data (never code), and a simulator can turn it off
(``--no-env-attributes``). A result that cannot travel (a space, a random
generator) is an ``unsupported`` error naming its type.

``scope`` says whose semantics apply:

* ``"vector"``: the hosted vector env's own ``call``/``get_attr``/``set_attr``
  (Gymnasium's: ``get_attr`` of a method calls it, ``set_attr`` takes one
  value or one per env);
* ``"each"`` with ``indices``: per sub-env, as SB3's ``DummyVecEnv`` does
  (``get_attr`` returns the attribute as is, ``set_attr`` sets it on the
  outermost env of each index);
* ``"self"``: the hosted vector env object itself, read only, and only its
  ``np_random_seed`` (its own methods, such as an async vector env's
  ``call_async``, would reach any name).

A single env is reached as Gymnasium's ``get_wrapper_attr`` /
``set_wrapper_attr`` / ``has_wrapper_attr`` reach it: through its wrappers.
"""

from __future__ import annotations

from typing import Any

from ..protocol import codec
from ..protocol.compression import Compression
from ..protocol.errors import ErrorCode, ProtocolError, UnsupportedError
from .entry_points import plain_kwargs

MAX_NAME = 100
# Reflection helpers: called through ``call`` they would read or write any name, private ones included.
_REFLECTION = frozenset(
    {"get_wrapper_attr", "set_wrapper_attr", "has_wrapper_attr", "call", "get_attr", "set_attr", "call_async", "call_wait"}
)
# What a trainer may read of a hosted vector env object itself (its methods are the simulator's to call).
_OWN = frozenset({"np_random_seed"})
_ACTIONS = ("call", "get", "set", "has")
_SCOPES = ("vector", "each", "self")


def public_name(value: Any) -> str:
    """``value`` if it names a public attribute; a coded error otherwise."""
    if not isinstance(value, str) or not value.isidentifier() or len(value) > MAX_NAME:
        raise ProtocolError("an attribute name must be a Python identifier", code=ErrorCode.BAD_PAYLOAD)
    if value.startswith("_"):
        raise UnsupportedError(f"{value!r} is private: trainers may only reach public attributes of envs")
    if value in _REFLECTION:
        raise UnsupportedError(f"{value!r} cannot be called remotely: it reaches attributes by name")
    return value


# Where the base classes of multi-agent envs live: their methods (RLlib's ``to_base_env``, which
# starts Ray actors, or ``with_agent_groups``) are the framework's, not the env author's public API.
FRAMEWORK_MODULES = ("ray.rllib.env.", "pettingzoo.utils.")
# Calls a trainer drives an env with (PettingZoo's observe and state, RLlib's get_agent_ids): answered
# by framework base classes too, and under --no-env-attributes.
API_CALLS = frozenset({"observe", "state", "get_agent_ids"})
_MAX_CHAIN = 32


def _wrapped(env: Any) -> list[Any]:
    """``env`` and the envs its wrappers wrap (Gymnasium's and PettingZoo's keep them in ``env``)."""
    chain = [env]
    while len(chain) < _MAX_CHAIN and "env" in getattr(chain[-1], "__dict__", {}):
        chain.append(chain[-1].__dict__["env"])
    return chain


def _framework_method(obj: Any, name: str) -> bool:
    for cls in type(obj).__mro__:
        member = vars(cls).get(name)
        if member is not None:
            routine = not isinstance(member, property) and (callable(member) or isinstance(member, classmethod))
            return routine and cls.__module__.startswith(FRAMEWORK_MODULES)
    return False


def check_env_method(envs: list[Any], name: str) -> None:
    """Refuse ``name`` if, on any of ``envs`` or what they wrap, it is a method a multi-agent
    framework's base class defines and the env's own classes do not override."""
    if name in API_CALLS:
        return
    for env in envs:
        for obj in _wrapped(env):
            if _framework_method(obj, name):
                raise UnsupportedError(
                    f"{name!r} is a method of {type(obj).__mro__[0].__module__.split('.')[0]}'s env base class, "
                    "not of the env itself: trainers may call only methods the env's own classes define"
                )


def call_arguments(arg: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """A call request's positional arguments (a list) and keyword arguments (plain data)."""
    args = arg.get("args") or []
    if not isinstance(args, list):
        raise ProtocolError("call arguments must be a list", code=ErrorCode.BAD_PAYLOAD)
    return args, plain_kwargs(arg.get("kwargs"), "call kwargs")


def _indices(value: Any, num_envs: int) -> list[int]:
    """Distinct env indices of the shard (repeats would multiply the answer)."""
    if (
        not isinstance(value, list)
        or len(value) > num_envs
        or not all(type(i) is int and 0 <= i < num_envs for i in value)
        or len(set(value)) != len(value)
    ):
        raise ProtocolError(f"indices must be distinct env indices below {num_envs}", code=ErrorCode.BAD_PAYLOAD)
    return value


def encode_attribute_result(
    result: Any, arg: dict[str, Any], max_bytes: int, compression: Compression | None = None, *,
    plain_maps: bool = False,
) -> bytes:
    """The answer's payload: data only, encoded once (compressed as the channel
    agreed), and a per-env list refused as soon as it passes ``max_bytes`` (not
    after encoding all of it)."""
    try:
        if isinstance(result, list):
            return codec.packb_items(result, max_bytes, compression, plain_maps=plain_maps)
        return codec.packb(result, compression, plain_maps=plain_maps)
    except codec.EncodeError as exc:
        raise UnsupportedError(
            f"the result of {arg.get('do')} {arg.get('name')!r} cannot be sent to the trainer: {exc.message} "
            "(only data travels: numbers, strings, arrays, lists, dicts, tuples)"
        ) from None


def handle_attribute(env: Any, arg: dict[str, Any], *, vector: bool, num_envs: int) -> Any:
    """Run one attribute request on ``env`` (the hosted env or vector env)."""
    action, scope = arg.get("do"), arg.get("scope", "vector")
    if action not in _ACTIONS or scope not in _SCOPES:
        raise ProtocolError("malformed attribute request", code=ErrorCode.BAD_PAYLOAD)
    name = public_name(arg.get("name"))
    args, kwargs = call_arguments(arg)
    value = arg.get("value")
    if action in ("call", "get"):  # a vector get_attr calls what it finds
        check_env_method([env, *(getattr(env, "envs", None) or ())], name)
    if not vector:
        if action == "get":
            return env.get_wrapper_attr(name)
        if action == "set":
            return env.set_wrapper_attr(name, value, force=arg.get("force", True) is True)
        if action == "has":
            return env.has_wrapper_attr(name)
        return env.get_wrapper_attr(name)(*args, **kwargs)
    if action == "has":
        raise ProtocolError("'has' is asked of single envs only", code=ErrorCode.BAD_PAYLOAD)
    if scope == "self":
        if action != "get" or name not in _OWN:
            raise UnsupportedError(f"of a hosted vector env itself, trainers may only read {sorted(_OWN)}")
        return getattr(env, name)
    if scope == "vector":
        if action == "get":
            return list(env.get_attr(name))
        if action == "set":
            env.set_attr(name, value)
            return None
        return list(env.call(name, *args, **kwargs))
    envs = getattr(env, "envs", None)
    if envs is None:
        raise UnsupportedError(f"{type(env).__name__} has no sub-envs to reach one by one")
    chosen = [envs[i] for i in _indices(arg.get("indices"), num_envs)]
    if action == "get":
        return [e.get_wrapper_attr(name) for e in chosen]
    if action == "set":
        for e in chosen:
            setattr(e, name, value)
        return None
    return [e.get_wrapper_attr(name)(*args, **kwargs) for e in chosen]

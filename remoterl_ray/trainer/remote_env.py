"""``RemoteEnv``: a real ``gymnasium.Env`` whose env lives on a simulator."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from ..config import resolve_compression
from ..protocol.frames import Op
from ..protocol.space_values import sample_converter
from .answers import reset_answer, step_answer
from .session import TrainerSession
from .shards import Serving, Shards

RECONNECTED = "remoterl_reconnected"  # info key: the relay connection was replaced, the episode truncated
COMPRESSION_KWARG = "remoterl_compression"  # make kwarg: this env's compression, instead of init's


def make_arg_of(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The make request's fields for ``gym.make`` kwargs: the env's own kwargs, and
    this env's compression if the call chose one (taken out: it is not the env's)."""
    compression = kwargs.pop(COMPRESSION_KWARG, None)
    arg: dict[str, Any] = {"kwargs": kwargs}
    if compression is not None:
        arg["compression"] = resolve_compression(compression)
    return arg


def _local(env: gym.Env, name: str) -> bool:
    """True for what this object answers itself (spaces, spec, metadata, np_random, ...)."""
    return name.startswith("_") or name in vars(env) or hasattr(type(env), name)


class RemoteEnv(gym.Env):
    """One env hosted by one simulator, created with the same id and kwargs
    as ``gym.make`` would use locally (wrappers such as TimeLimit and
    OrderEnforcing run on the simulator, exactly as they would here)."""

    def __init__(self, session: TrainerSession, env_id: str, **kwargs: Any) -> None:
        self._remote = Shards(session, env_id, 1, make_arg_of(kwargs), vector=False)
        description = self._remote.description
        self.observation_space = self._remote.observation_space
        self.action_space = self._remote.action_space
        self.metadata = dict(description.metadata)
        self.render_mode = description.render_mode
        self.spec = self._remote.spec()
        # Samples the codec cannot carry as they are (Graph, registered user spaces); None: nothing to do.
        self._obs_values = sample_converter(self.observation_space)
        self._action_values = sample_converter(self.action_space)

    @property
    def channel(self) -> int:
        return self._remote.channels[0]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)  # keeps self.np_random consistent with a local env
        request = [{"seed": seed, "options": options}]
        answer = self._remote.request_anew(Op.RESET, request, lambda: request)[0]
        return self._received(reset_answer(answer))

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        if self._remote.state is Serving.LIVE:
            if self._action_values is not None:
                action = self._action_values.to_wire(action)
            answers = self._remote.request(Op.STEP, [action])
            if answers is not None:
                return self._received(step_answer(answers[0]))
        # The env was made again on a new connection (before or during this step): the episode ends, truncated.
        obs, info = self.reset()
        return obs, 0.0, False, True, {**info, RECONNECTED: True}

    def _received(self, result: tuple[Any, ...]) -> Any:
        if self._obs_values is None:
            return result
        return (self._obs_values.from_wire(result[0]), *result[1:])

    # -- attributes of the env on the simulator (Gymnasium's wrapper-attribute API) --

    def get_wrapper_attr(self, name: str) -> Any:
        """An attribute of this env object, else of the env on the simulator (public names only)."""
        if _local(self, name):
            return getattr(self, name)
        return self._remote.call(Op.ATTR, [{"do": "get", "name": name}])[0]

    def set_wrapper_attr(self, name: str, value: Any, *, force: bool = True) -> bool:
        if _local(self, name):
            setattr(self, name, value)
            return True
        return self._remote.call(Op.ATTR, [{"do": "set", "name": name, "value": value, "force": force}])[0]

    def has_wrapper_attr(self, name: str) -> bool:
        if _local(self, name):
            return True
        return self._remote.call(Op.ATTR, [{"do": "has", "name": name}])[0]

    def render(self) -> Any:
        return self._remote.request_reset(Op.RENDER, lambda: [None], self.reset)[0]  # a new env renders once reset

    def close(self) -> None:
        remote = getattr(self, "_remote", None)
        if remote is not None:
            remote.close()

    @property
    def closed(self) -> bool:
        return self._remote.closed

    def __repr__(self) -> str:
        return f"<RemoteEnv {self._remote.env_id} channel={self.channel}>"

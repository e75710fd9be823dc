"""RLlib env creators as "module:function" strings, the only form that may
travel to a simulator (code never does). A simulator runs a creator only if
its allowlist names that function (``--allow my_pkg.envs:make_env``), or if
it is a ``gymnasium.Env`` subclass in an allowed module (``--allow my_pkg``)."""

from __future__ import annotations

from typing import Any

from gymnasium.envs.registration import load_env_creator

from ..protocol.errors import UnsupportedError
from ..trainer.targets import importable_name


class EnvCreator:
    """A picklable creator naming a function the simulators import:
    ``register_env("MyEnv", EnvCreator("my_pkg.envs:make_env"))``. Called
    locally it imports and calls that function too."""

    def __init__(self, target: str) -> None:
        module, _, attr = target.partition(":")
        if not module or not attr:
            raise ValueError(f"an env creator must be written 'module:function', got {target!r}")
        self.target = target

    def __call__(self, env_config: Any) -> Any:
        return load_env_creator(self.target)(env_config)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EnvCreator) and other.target == self.target

    def __hash__(self) -> int:
        return hash(self.target)

    def __repr__(self) -> str:
        return f"EnvCreator({self.target!r})"


def creator_target(creator: Any, name: str) -> str:
    """The "module:function" a simulator can import for ``creator``, or a
    clear error saying how to register it so that it can."""
    if isinstance(creator, EnvCreator):
        return creator.target
    if isinstance(creator, str):
        return EnvCreator(creator).target
    target = importable_name(creator)
    if target is not None:
        return target
    raise UnsupportedError(
        f"env {name!r} is created by {creator!r}, which the simulators cannot import "
        "(a lambda, a nested function or something defined in __main__ is code, and code never "
        "travels). Put the creator in a module the simulators can import and register it by name: "
        f"register_env({name!r}, 'my_pkg.envs:make_env'), then start the simulators with "
        "--allow my_pkg.envs:make_env (a function must be named; a gymnasium.Env subclass "
        "needs only its module: --allow my_pkg)"
    )

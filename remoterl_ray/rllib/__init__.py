"""RLlib (new API stack) and Tune on remote simulators.

``RemoteEnvRunner``, ``RemoteMultiAgentEnvRunner`` and ``use_remote_env_runners``
import RLlib on first use.
"""

from __future__ import annotations

from typing import Any

from ..extras import require

require("ray", "remoterl_ray.rllib (RLlib and Tune on remote simulators)", "rllib")

from .creators import EnvCreator  # noqa: E402 - after the check, so a missing extra is one clear line

__all__ = ["EnvCreator", "FirstReadyEnvRunner", "RemoteEnvRunner", "RemoteMultiAgentEnvRunner", "use_remote_env_runners"]


def __getattr__(name: str) -> Any:
    if name == "RemoteEnvRunner":
        from .env_runner import RemoteEnvRunner

        return RemoteEnvRunner
    if name == "RemoteMultiAgentEnvRunner":
        from .multi_agent import RemoteMultiAgentEnvRunner

        return RemoteMultiAgentEnvRunner
    if name == "FirstReadyEnvRunner":
        from .first_ready import FirstReadyEnvRunner

        return FirstReadyEnvRunner
    if name == "use_remote_env_runners":
        from .patch import use_remote_env_runners

        return use_remote_env_runners
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Stable-Baselines3 on remote simulators (``pip install remoterl-ray[sb3]``)."""

from ..extras import require

require("stable_baselines3", "remoterl_ray.sb3 (Stable-Baselines3 on remote simulators)", "sb3")

from .vec_env import RemoteVecEnv  # noqa: E402 - after the check, so a missing extra is one clear line

__all__ = ["RemoteVecEnv"]

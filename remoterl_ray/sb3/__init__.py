"""Stable-Baselines3 on remote simulators (``pip install remoterl-ray[sb3]``)."""

from .vec_env import RemoteVecEnv

__all__ = ["RemoteVecEnv"]

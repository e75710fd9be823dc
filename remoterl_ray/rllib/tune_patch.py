"""While a trainer is initialized: ``tune.Tuner`` given an ``AlgorithmConfig``
runs its trials on ``RemoteEnvRunner``s, and ``ray.tune.register_env`` takes
"module:function" strings and refuses creators the simulators cannot import.

Imports no RLlib at module level: Tune is imported while RLlib is.
"""

from __future__ import annotations

import sys
from typing import Any

from ..trainer.patching import Patcher
from ..trainer.session import TrainerSession
from .creators import EnvCreator, creator_target


def patch_tune(session: TrainerSession, patcher: Patcher) -> None:
    import ray.tune
    import ray.tune.registry
    from ray.tune import Tuner

    original_register_env = ray.tune.registry.register_env
    original_tuner_init = Tuner.__init__

    def register_env(name: str, env_creator: Any) -> None:
        original_register_env(name, EnvCreator(creator_target(env_creator, name)))

    def __init__(self: Tuner, trainable: Any = None, *args: Any, param_space: Any = None, **kwargs: Any) -> None:
        algorithm_config = sys.modules.get("ray.rllib.algorithms.algorithm_config")
        if algorithm_config is not None and isinstance(param_space, algorithm_config.AlgorithmConfig):
            from .patch import use_remote_env_runners

            param_space = use_remote_env_runners(param_space, session.settings)
        original_tuner_init(self, trainable, *args, param_space=param_space, **kwargs)

    patcher.replace([ray.tune, ray.tune.registry], "register_env", original_register_env, register_env)
    patcher.set(Tuner, "__init__", __init__)

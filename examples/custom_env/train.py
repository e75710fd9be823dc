"""Train on a custom env that lives on the simulators.

    REMOTERL_API_KEY=... REMOTERL_RELAY_URL=ws://relay-host:8000 python examples/custom_env/train.py

The trainer registers the env by its entry point string; ``gym.register``
is mirrored to the simulators (for this trainer's envs only), which import
``gridwalk`` only because their operator allowed it (``--allow gridwalk`` or
REMOTERL_ALLOW_MODULES=gridwalk). That allows gridwalk's gymnasium.Env
subclasses such as ``GridWalkEnv``; a function entry point would have to be
named (``--allow gridwalk:make_env``). The trainer never imports the env's code.
"""

import os

import gymnasium as gym
import numpy as np

import remoterl

STEPS = int(os.environ.get("EXAMPLE_STEPS", 2_000))

if not remoterl.init(role="trainer", num_workers=1, num_env_runners=8):
    raise SystemExit("no relay or no simulator online; start one with examples/simulator.py")

gym.register("GridWalk-v0", entry_point="gridwalk:GridWalkEnv", max_episode_steps=50, kwargs={"size": 6})
envs = gym.make_vec("GridWalk-v0", num_envs=8)
obs, _ = envs.reset(seed=0)
finished = 0
rng = np.random.default_rng(0)
for _ in range(STEPS // 8):
    actions = (rng.random(8) < 0.8).astype(np.int64)  # mostly right
    obs, rewards, terminated, truncated, infos = envs.step(actions)
    finished += int(np.sum(terminated))
print(f"GridWalk-v0 on {envs.shard_sizes} remote envs: {finished} episodes reached the goal")
envs.close()
remoterl.shutdown()

"""Stable-Baselines3 PPO on remote simulators: the only new line is remoterl.init.

    REMOTERL_API_KEY=... REMOTERL_RELAY_URL=ws://relay-host:8000 python examples/sb3_ppo.py

``make_vec_env`` returns one remote vector env: each step is one frame per
simulator, however many envs there are. Start simulators with
examples/simulator.py (or ``remoterl simulator``) anywhere that reaches the relay.
"""

import os

from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

import remoterl

TIMESTEPS = int(os.environ.get("EXAMPLE_TIMESTEPS", 100_000))
N_ENVS = 32

if not remoterl.init(api_key=os.environ.get("REMOTERL_API_KEY"), role="trainer", num_workers=1, num_env_runners=8):
    raise SystemExit("no relay or no simulator online: see the line above")
env = make_vec_env("CartPole-v1", n_envs=N_ENVS)
# One rollout is n_steps x N_ENVS steps: keep it within the budget (2048 steps per env at most).
model = PPO("MlpPolicy", env, n_steps=min(2048, max(64, TIMESTEPS // N_ENVS)), verbose=1)
model.learn(total_timesteps=TIMESTEPS)
episodes = list(model.ep_info_buffer)
print(f"trained {model.num_timesteps} steps; mean return of the last {len(episodes)} episodes: "
      f"{sum(e['r'] for e in episodes) / max(1, len(episodes)):.1f}")
remoterl.shutdown()

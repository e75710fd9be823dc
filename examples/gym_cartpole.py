"""Plain Gymnasium code, stepped on a remote simulator after one init call.

    REMOTERL_API_KEY=... REMOTERL_RELAY_URL=ws://relay-host:8000 python examples/gym_cartpole.py
"""

import gymnasium as gym
import numpy as np

import remoterl

if not remoterl.init(role="trainer", num_env_runners=4):
    raise SystemExit("no relay or no simulator online; start one with examples/simulator.py")

# A single env: a real gymnasium.Env whose CartPole runs on a simulator.
env = gym.make("CartPole-v1")
obs, info = env.reset(seed=0)
episode_return, done = 0.0, False
while not done:
    obs, reward, terminated, truncated, info = env.step(int(obs[2] > 0))  # lean into the fall
    episode_return += reward
    done = terminated or truncated
print(f"single env: return {episode_return:.0f}")
env.close()

# A vector env: 8 envs in sync mode, spread over the simulators, one frame per simulator
# per step, NEXT_STEP autoreset. (Without a mode, CartPole's own vector env is used, as
# locally: it vectorises in one object, so one simulator hosts all of it.)
envs = gym.make_vec("CartPole-v1", num_envs=8, vectorization_mode="sync")
obs, infos = envs.reset(seed=0)
finished = 0
for _ in range(300):
    obs, rewards, terminations, truncations, infos = envs.step((obs[:, 2] > 0).astype(np.int64))
    finished += int(np.sum(terminations | truncations))
print(f"vector env {envs.shard_sizes}: {finished} episodes finished in 300 steps")
envs.close()

remoterl.shutdown()

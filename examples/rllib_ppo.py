"""RLlib PPO (new API stack) on remote simulators, with the config unchanged.

    REMOTERL_API_KEY=... REMOTERL_RELAY_URL=ws://relay-host:8000 python examples/rllib_ppo.py

After ``remoterl.init`` every algorithm built here uses ``RemoteEnvRunner``:
each env runner (a Ray actor) hosts its vector env on the simulators. Without
init, set it yourself: ``.env_runners(env_runner_cls=RemoteEnvRunner)`` with
REMOTERL_API_KEY / REMOTERL_RELAY_URL set for the Ray workers.
"""

import os

from ray.rllib.algorithms.ppo import PPOConfig

import remoterl

ITERATIONS = int(os.environ.get("EXAMPLE_ITERATIONS", 30))

if not remoterl.init(role="trainer", num_workers=1, num_env_runners=4):
    raise SystemExit("no relay or no simulator online; start one with examples/simulator.py")

algo = (
    PPOConfig()
    .environment("CartPole-v1")
    .env_runners(num_env_runners=2, num_envs_per_env_runner=4)
    .training(lr=3e-4, num_epochs=6, vf_loss_coeff=0.01)
    .build_algo()
)
for i in range(ITERATIONS):
    result = algo.train()
    runners = result["env_runners"]
    remote = runners.get("remoterl", {})
    print(f"iteration {i + 1}: mean return {runners.get('episode_return_mean', float('nan')):.1f}, "
          f"remote step p50 {remote.get('step_latency_p50_ms', float('nan')):.2f} ms")
algo.stop()
remoterl.shutdown()

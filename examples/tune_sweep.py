"""A Tune sweep whose trials all sample from remote simulators.

    REMOTERL_API_KEY=... REMOTERL_RELAY_URL=ws://relay-host:8000 python examples/tune_sweep.py

``tune.Tuner`` given an AlgorithmConfig after ``remoterl.init`` runs every
trial's env runners as ``RemoteEnvRunner``s; the relay URL and key travel
inside the config (the key is never written to Tune's logs).
"""

import os

from ray import tune
from ray.rllib.algorithms.ppo import PPOConfig

import remoterl

ITERATIONS = int(os.environ.get("EXAMPLE_ITERATIONS", 10))

if not remoterl.init(role="trainer", num_workers=1, num_env_runners=4):
    raise SystemExit("no relay or no simulator online; start one with examples/simulator.py")

config = (
    PPOConfig()
    .environment("CartPole-v1")
    .env_runners(num_env_runners=1, num_envs_per_env_runner=4)
    .training(lr=tune.grid_search([1e-3, 3e-4]), train_batch_size_per_learner=1000, num_epochs=4)
)
tuner = tune.Tuner(
    "PPO",
    param_space=config,
    tune_config=tune.TuneConfig(metric="env_runners/episode_return_mean", mode="max", max_concurrent_trials=1),
    run_config=tune.RunConfig(stop={"training_iteration": ITERATIONS}, verbose=0),
)
results = tuner.fit()
best = results.get_best_result()
print(f"best lr {best.config['lr']}: mean return {best.metrics['env_runners']['episode_return_mean']:.1f}")
remoterl.shutdown()

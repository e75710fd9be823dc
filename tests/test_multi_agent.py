"""Multi-agent envs on real simulators: RLlib's MultiAgentEnvRunner contract and
PettingZoo's parallel and AEC APIs, each run locally and remotely side by side.

Modelled on RLlib's own tests of ``MultiAgentEnvRunner`` and
``SyncVectorMultiAgentEnv`` (reset seeds, next-step autoreset, per-env agent maps)
and on PettingZoo's own API test helpers, which run here against the remote envs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from attackers import ScriptedSimulator, greeted, open_channel, request
from conftest import TEST_ENVS_ALLOW, CrashableRelay, SimulatorPool, init_trainer
from identical import assert_identical
from gymnasium import spaces as gym_spaces
from pettingzoo.classic import tictactoe_v3
from pettingzoo.sisl import multiwalker_v9
from pettingzoo.test import api_test, parallel_api_test
from pettingzoo.utils.conversions import parallel_to_aec
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.connectors.env_to_module import FlattenObservations
from ray.rllib.env.multi_agent_env_runner import MultiAgentEnvRunner
from ray.rllib.examples.envs.classes.multi_agent import MultiAgentCartPole
from remoterl_agent_envs import Arrivals, ArrivalsMultiAgent, make_rps

import remoterl_ray
from remoterl_ray.api import trainer_settings
from remoterl_ray.pettingzoo import RemoteAECEnv, RemoteParallelEnv, env, parallel_env
from remoterl_ray.protocol import codec
from remoterl_ray.protocol.errors import (
    EnvsMadeAgainError,
    ErrorCode,
    ProtocolError,
    RegistrationRefusedError,
    SimulatorLostError,
    UnsupportedError,
)
from remoterl_ray.protocol.frames import Op
from remoterl_ray.protocol.messages import Hello
from remoterl_ray.protocol.spaces import space_to_wire
from remoterl_ray.rllib import RemoteMultiAgentEnvRunner, use_remote_env_runners
from remoterl_ray.rllib.multi_agent import RemoteVectorMultiAgentEnv
from remoterl_ray.trainer.remote_agents import AgentEnvs
from remoterl_ray.trainer.remote_env import RECONNECTED

AGENT_ENVS = "remoterl_agent_envs"
MULTI_AGENT_ALLOW = (
    *TEST_ENVS_ALLOW,
    AGENT_ENVS,
    f"{AGENT_ENVS}:arrivals",
    f"{AGENT_ENVS}:make_rps",
    f"{AGENT_ENVS}:single_agent",
    f"{AGENT_ENVS}:not_multi_agent",
    "ray.rllib.examples.envs.classes.multi_agent",
    "pettingzoo.classic.tictactoe_v3:env",
    "pettingzoo.sisl.multiwalker_v9:parallel_env",
)
NUM_ENVS = 4


@pytest.fixture(scope="module")
def pool(relay, keys) -> Iterator[SimulatorPool]:
    pool = SimulatorPool(relay, keys.take())
    pool.start(2, allow=MULTI_AGENT_ALLOW)
    yield pool
    pool.stop()


@pytest.fixture(scope="module")
def trainer(relay, pool) -> Iterator[Any]:
    assert init_trainer(relay, pool.key, num_workers=2, num_env_runners=2)
    yield remoterl_ray.current_session()
    remoterl_ray.shutdown()


def seeded_actions(spaces: dict, agents: list, seed: int) -> dict:
    """One action per agent, sampled from its space with a seed (the same locally and remotely)."""
    actions = {}
    for offset, agent in enumerate(agents):
        space = spaces[agent]
        space.seed(seed * 1000 + offset)
        actions[agent] = space.sample()
    return actions


# -- RLlib: MultiAgentEnvRunner's env, remote and local ------------------------------------------


def first_agent_apart(agent_id: Any, episode: Any, **kwargs: Any) -> str:
    """Two policies: the first agent's (CartPole's 0, the base) and the others'."""
    return "p0" if agent_id in (0, "base", "player_0") else "p1"


def flattened(env: Any, spaces: Any, device: Any) -> FlattenObservations:
    """As RLlib's multi-agent examples do for Dict and Discrete observations."""
    return FlattenObservations(multi_agent=True)


def runner_config(env: Any, env_config: dict, **env_runners: Any) -> PPOConfig:
    env_runners.setdefault("num_envs_per_env_runner", NUM_ENVS)
    env_runners.setdefault("env_to_module_connector", flattened)
    return (
        PPOConfig()
        .environment(env, env_config=env_config)
        .multi_agent(policies={"p0", "p1"}, policy_mapping_fn=first_agent_apart)
        .env_runners(**env_runners)
    )


def remote_runner(relay, key: str, config: PPOConfig) -> RemoteMultiAgentEnvRunner:
    settings = trainer_settings(key, relay.url, num_workers=2, num_env_runners=NUM_ENVS // 2, timeout=30.0)
    return RemoteMultiAgentEnvRunner(config=use_remote_env_runners(config, settings))


def step_side_by_side(local_env: Any, remote_env: Any, steps: int, seed: int) -> int:
    """Reset both vector envs with ``seed``, then step both ``steps`` times with the same
    actions for the agents each env lists: every result identical. Returns the episodes ended."""
    assert_identical(local_env.reset(seed=seed), remote_env.reset(seed=seed), "reset")
    spaces = local_env.single_action_spaces
    ended = 0
    obs = None
    for t in range(steps):
        observations = obs if obs is not None else [dict.fromkeys(e.unwrapped.agents) for e in local_env.envs]
        actions = [seeded_actions(spaces, list(o), t * 10 + i) for i, o in enumerate(observations)]
        local, remote = local_env.step(actions), remote_env.step(actions)
        assert_identical(local, remote, f"step {t}")
        assert [e.unwrapped.agents for e in remote_env.envs] == [e.unwrapped.agents for e in local_env.envs]
        obs = local[0]
        ended += sum(bool(t["__all__"]) or bool(u.get("__all__")) for t, u in zip(local[2], local[3]))
    return ended


def test_multi_agent_cartpole_remote_equals_local_for_500_steps(relay, pool):
    config = runner_config(MultiAgentCartPole, {"num_agents": 2})
    remote = remote_runner(relay, pool.key, config)
    local = MultiAgentEnvRunner(config=config)
    try:
        assert isinstance(remote.env, RemoteVectorMultiAgentEnv) and remote.env.remote._remote.sizes == [2, 2]
        assert remote.env.single_observation_spaces == local.env.single_observation_spaces
        assert remote.env.single_action_space == local.env.single_action_space
        assert remote.env.metadata == local.env.metadata
        assert remote.config.env_config == local.config.env_config  # the relay settings stay with the runner
        conn = remote._session.links.conn
        before = conn.counters.frames_sent
        ended = step_side_by_side(local.env, remote.env, 500, seed=11)
        assert ended >= 4, "the steps crossed episode ends (next-step autoresets)"
        # one frame per simulator per step (reset included), autoresets riding in the same frames
        assert conn.counters.frames_sent - before == 501 * 2
    finally:
        remote.stop()
        local.stop()


def test_agents_arriving_and_leaving_keep_the_vector_envs_contract(relay, pool):
    config = runner_config(ArrivalsMultiAgent, {"max_steps": 9})
    remote = remote_runner(relay, pool.key, config)
    local = MultiAgentEnvRunner(config=config)
    try:
        assert remote.env.envs[0].unwrapped.possible_agents == ["base", "scout_0", "scout_1", "scout_2"]
        assert step_side_by_side(local.env, remote.env, 40, seed=3) >= 8
    finally:
        remote.stop()
        local.stop()


def test_runner_samples_episodes_whose_agents_arrive_and_leave(relay, pool):
    config = runner_config(ArrivalsMultiAgent, {"max_steps": 9}, env_runner_cls=RemoteMultiAgentEnvRunner,
                           num_envs_per_env_runner=2)  # fmt: skip
    remote = remote_runner(relay, pool.key, config)
    try:
        assert type(remote) is RemoteMultiAgentEnvRunner
        episodes = remote.sample(num_episodes=4, random_actions=True)
        done = [e for e in episodes if e.is_done]
        assert len(done) >= 4
        for episode in done:
            lengths = {aid: len(agent) for aid, agent in episode.agent_episodes.items()}
            # the base all 9 steps; scout 0 until it ends at step 5; scouts 1 and 2 from steps 2 and 4
            assert lengths == {"base": 9, "scout_0": 5, "scout_1": 7, "scout_2": 5}
            assert episode.agent_episodes["scout_0"].is_terminated
            assert episode.agent_episodes["base"].is_truncated
        metrics = remote.get_metrics()
        assert metrics["remoterl"]["simulators"] == 2
    finally:
        remote.stop()


def test_rllib_parallel_pettingzoo_wrapper_through_a_module_level_creator(relay, pool):
    from ray import tune

    tune.register_env("rps", make_rps)  # a module-level function: it travels by its name
    config = runner_config("rps", {"max_cycles": 5}, num_envs_per_env_runner=2)
    remote = remote_runner(relay, pool.key, config)
    try:
        assert sorted(remote.env.single_action_spaces) == ["player_0", "player_1"]
        episodes = remote.sample(num_episodes=2, random_actions=True)
        assert all(len(e) == 5 for e in episodes if e.is_done)
    finally:
        remote.stop()


# -- PettingZoo: parallel envs ---------------------------------------------------------------------


def parallel_side_by_side(local: Any, remote: RemoteParallelEnv, steps: int, seed: int) -> int:
    assert remote.possible_agents == local.possible_agents
    for agent in local.possible_agents:
        assert remote.observation_space(agent) == local.observation_space(agent)
        assert remote.action_space(agent) == local.action_space(agent)
    episodes = 0
    assert_identical(local.reset(seed=seed), remote.reset(seed=seed), "reset")
    for t in range(steps):
        if not local.agents:
            episodes += 1
            assert not remote.agents
            assert_identical(local.reset(seed=seed + t), remote.reset(seed=seed + t), f"reset at {t}")
        actions = {a: local.action_space(a).sample() for a in local.agents}
        assert_identical(local.step(actions), remote.step(actions), f"step {t}")
        assert remote.agents == local.agents
    return episodes


def test_parallel_env_with_agents_arriving_and_leaving_equals_local(trainer):
    remote = parallel_env(f"{AGENT_ENVS}:arrivals", max_steps=7)
    local = Arrivals(max_steps=7)
    try:
        assert isinstance(remote, RemoteParallelEnv)
        assert parallel_side_by_side(local, remote, 200, seed=5) >= 20
        assert_identical(local.state(), remote.state())
        assert_identical(local.render(), remote.render())
        assert remote.num_agents == local.num_agents and remote.max_num_agents == 4
        local.reset(seed=1)
        remote.reset(seed=1)
        parallel_api_test(remote, num_cycles=100)
    finally:
        remote.close()


def test_multiwalker_equals_local_and_passes_pettingzoos_parallel_api_test(trainer):
    kwargs = {"n_walkers": 3, "terminate_on_fall": False, "remove_on_fall": True, "max_cycles": 60}
    remote = parallel_env("pettingzoo.sisl.multiwalker_v9:parallel_env", **kwargs)
    local = multiwalker_v9.parallel_env(**kwargs)
    try:
        parallel_side_by_side(local, remote, 200, seed=2)
        parallel_api_test(remote, num_cycles=200)
    finally:
        remote.close()
        local.close()


def test_one_frame_per_step_whatever_the_number_of_agents(trainer):
    remote = parallel_env("pettingzoo.sisl.multiwalker_v9:parallel_env", n_walkers=5)
    try:
        remote.reset(seed=0)
        conn = trainer.links.conn
        before = conn.counters.frames_sent
        for _ in range(10):
            remote.step({a: remote.action_space(a).sample() * 0 for a in remote.agents})
        assert conn.counters.frames_sent - before == 10
    finally:
        remote.close()


# -- PettingZoo: AEC envs ----------------------------------------------------------------------------


def aec_side_by_side(local: Any, remote: RemoteAECEnv, steps: int, seed: int) -> int:
    def turn(e: Any) -> tuple:
        seen = {a: e.observe(a) for a in e.agents}  # every agent's view, not only the selected one's
        last = e.last() if e.agents else None
        return (e.agents, e.agent_selection, last, e.rewards, e._cumulative_rewards, e.terminations,
                e.truncations, e.infos, seen)  # fmt: skip

    local.reset(seed=seed)
    remote.reset(seed=seed)
    games = 0
    for t in range(steps):
        assert_identical(turn(local), turn(remote), f"turn {t}")
        if not local.agents:
            games += 1
            local.reset(seed=seed + t)
            remote.reset(seed=seed + t)
            continue
        obs, _, terminated, truncated, _ = local.last()
        if terminated or truncated:
            action = None
        else:
            mask = obs["action_mask"] if isinstance(obs, dict) and "action_mask" in obs else None
            action = local.action_space(local.agent_selection).sample(mask)
        local.step(action)
        remote.step(action)
    return games


def test_classic_aec_env_equals_local_and_passes_pettingzoos_api_test(trainer):
    remote = env("pettingzoo.classic.tictactoe_v3:env")
    local = tictactoe_v3.env()
    try:
        assert isinstance(remote, RemoteAECEnv)
        assert aec_side_by_side(local, remote, 200, seed=4) >= 10
        api_test(remote, num_cycles=100)
        remote.reset(seed=0)
        conn = trainer.links.conn
        before = conn.counters.frames_sent
        for agent in remote.agent_iter(5):  # the loop PettingZoo teaches: one frame per turn
            obs, _, terminated, truncated, _ = remote.last()
            remote.step(None if terminated or truncated else int(np.flatnonzero(obs["action_mask"])[0]))
        assert conn.counters.frames_sent - before == 5
    finally:
        remote.close()


def test_a_parallel_factory_becomes_an_aec_env_through_pettingzoos_conversion(trainer):
    remote = env(f"{AGENT_ENVS}:arrivals", max_steps=6)
    local = parallel_to_aec(Arrivals(max_steps=6))
    try:
        assert aec_side_by_side(local, remote, 200, seed=9) >= 5
    finally:
        remote.close()


def test_an_aec_env_pettingzoo_cannot_parallelize_is_refused_with_what_to_do(trainer):
    with pytest.raises(UnsupportedError, match=r"remoterl_ray\.pettingzoo\.env"):
        parallel_env("pettingzoo.classic.tictactoe_v3:env")


def test_a_factory_off_the_allowlist_is_refused(trainer):
    with pytest.raises(RegistrationRefusedError, match="allowlist"):
        parallel_env("pettingzoo.classic.rps_v2:parallel_env")


def test_without_a_trainer_there_is_no_silent_local_env(monkeypatch):
    monkeypatch.setattr("remoterl_ray.pettingzoo.current_session", lambda: None)
    with pytest.raises(RuntimeError, match="remoterl_ray.init"):
        parallel_env(f"{AGENT_ENVS}:arrivals")


# -- losing a simulator ------------------------------------------------------------------------------


def test_a_lost_simulator_ends_its_episodes_and_rllib_recreates_the_env(relay, keys):
    pool = SimulatorPool(relay, keys.take())
    pool.start(2, allow=MULTI_AGENT_ALLOW)
    settings = trainer_settings(pool.key, relay.url, num_workers=2, num_env_runners=2, timeout=30.0,
                                resume_window=1.0)  # fmt: skip
    config = runner_config(MultiAgentCartPole, {"num_agents": 2}).fault_tolerance(
        restart_failed_sub_environments=True
    )
    runner = RemoteMultiAgentEnvRunner(config=use_remote_env_runners(config, settings))
    try:
        runner.sample(num_timesteps=20, random_actions=True)
        pool.procs[0].kill()
        episodes = runner.sample(num_timesteps=40, random_actions=True)
        assert sum(e.env_steps() for e in episodes) >= 40
        assert runner.env.remote._remote.sizes == [NUM_ENVS]  # recreated on the simulator still online
    finally:
        runner.stop()
        pool.stop()


def test_a_lost_simulator_fails_a_pettingzoo_step_with_a_typed_error(relay, keys):
    pool = SimulatorPool(relay, keys.take())
    pool.start(1, allow=MULTI_AGENT_ALLOW)
    assert init_trainer(relay, pool.key, resume_window=1.0)
    try:
        remote = parallel_env(f"{AGENT_ENVS}:arrivals")
        remote.reset(seed=0)
        pool.procs[0].kill()
        with pytest.raises(SimulatorLostError):
            for _ in range(5):
                remote.step({a: 0 if a != "base" else np.zeros(2, np.int64) for a in remote.agents})
    finally:
        remoterl_ray.shutdown()
        pool.stop()


def test_a_relay_restart_mid_episode_resumes_the_multi_agent_episode():
    with CrashableRelay("ma-resume", 0) as crashable:
        crashable.pool.start(1, allow=MULTI_AGENT_ALLOW)
        assert init_trainer(crashable.relay, crashable.key)
        try:
            remote = parallel_env(f"{AGENT_ENVS}:arrivals", max_steps=50)
            local = Arrivals(max_steps=50)
            assert_identical(local.reset(seed=8), remote.reset(seed=8))
            for t in range(20):
                if t == 6:
                    crashable.crash()
                actions = seeded_actions({a: local.action_space(a) for a in local.possible_agents}, local.agents, t)
                local_step, remote_step = local.step(actions), remote.step(actions)
                assert not any(RECONNECTED in info for info in remote_step[4].values()), "resumed, not made again"
                assert_identical(local_step, remote_step, f"step {t}")
            remote.close()
        finally:
            remoterl_ray.shutdown()


# -- attacks: a hostile simulator, a hostile trainer ---------------------------------------------------


def agents_description(**agents: Any) -> dict[str, Any]:
    """What a real simulator describes for one Arrivals env, with ``agents`` fields replaced."""
    from remoterl_ray.simulator.agents import HostedAgents

    hosted = HostedAgents([Arrivals()])
    description = hosted.describe()
    description["agents"].update(agents)
    return description


def scripted(description: dict, step_answer: Any = None) -> Any:
    """Answers of a simulator that makes nothing: it describes ``description`` and answers
    every reset and step of a one-env shard with what a test gives."""
    good_obs = Arrivals().reset(seed=0)[0]

    def answer(op: int, channel: int, req: Any) -> Any:
        if op in (Op.MAKE, Op.MAKE_VEC):
            return description
        if op == Op.RESET:
            return [[good_obs, {"base": {}, "scout_0": {}}, ["base", "scout_0"]]]
        if op == Op.STEP:
            return step_answer
        return None

    return answer


@contextmanager
def hostile_simulator(relay, keys, answer: Any) -> Iterator[None]:
    """A trainer initialized on a fresh workspace whose one simulator answers with ``answer``."""
    key = keys.take()
    sim = ScriptedSimulator(relay, key, answer)
    try:
        assert init_trainer(relay, key)
        yield
    finally:
        remoterl_ray.shutdown()
        sim.close()


def expect_bad_payload(call: Any, match: str | None = None) -> None:
    with pytest.raises(ProtocolError, match=match) as caught:
        call()
    assert caught.value.code is ErrorCode.BAD_PAYLOAD


BAD_DESCRIPTIONS = {
    "repeated agent": {"possible_agents": ["base", "base", "scout_1", "scout_2"]},
    "bool agent id": {"possible_agents": [True, "scout_0", "scout_1", "scout_2"]},
    "tuple agent id": {"possible_agents": [["a", 1], "scout_0", "scout_1", "scout_2"]},
    "too many agents": {"possible_agents": [f"a{i}" for i in range(5000)]},
    "spaces short": {"action_spaces": []},
    "live agents per env": {"agents": [["base"], ["base"]]},
    "unknown live agent": {"agents": [["intruder"]]},
    "unknown kind": {"kind": "swarm"},
    # a few bytes that would build four 8000x8000 float64 Boxes (2 GiB of bounds): past max_space_bytes
    "spaces past the space budget": {
        "observation_spaces": [space_to_wire(gym_spaces.Box(0.0, 1.0, (8000, 8000), np.float64))] * 4
    },
}


@pytest.mark.parametrize("fields", BAD_DESCRIPTIONS.values(), ids=BAD_DESCRIPTIONS.keys())
def test_a_malformed_multi_agent_description_is_a_coded_error(relay, keys, fields):
    with hostile_simulator(relay, keys, scripted(agents_description(**fields))):
        expect_bad_payload(lambda: parallel_env(f"{AGENT_ENVS}:arrivals"))


def test_a_description_of_the_wrong_kind_is_a_coded_error(relay, keys):
    import gymnasium as gym

    with hostile_simulator(relay, keys, scripted(agents_description())):
        expect_bad_payload(lambda: gym.make("CartPole-v1"), "single-agent")  # answered with a multi-agent env
        expect_bad_payload(lambda: env(f"{AGENT_ENVS}:arrivals"), "aec make")  # answered with a parallel env


BAD_STEPS = {
    "unknown agent's observation": [[{"intruder": 1.0}, {}, {}, {}, {}, []]],
    "rewards not numbers": [[{}, {"base": "lots"}, {}, {}, {}, ["base"]]],
    "flags not a map": [[{}, {}, [True], {}, {}, ["base"]]],
    "unknown live agent": [[{}, {}, {}, {}, {}, ["intruder"]]],
    "four maps": [[{}, {}, {}, {}, ["base"]]],
    "entries per env": [None, None],
    "unhashable live agent": [[{}, {}, {}, {}, {}, [["base"]]]],
    "repeated live agents": [[{}, {}, {}, {}, {}, ["base", "base"]]],
    "rewards making lists for missing agents": [[{}, defaultdict(list, {"base": 1.0}), {}, {}, {}, ["base"]]],
    "an info that is no map": [[{}, {}, {}, {}, {"base": 5}, ["base"]]],
}


@pytest.mark.parametrize("answer", BAD_STEPS.values(), ids=BAD_STEPS.keys())
def test_a_malformed_multi_agent_step_is_a_coded_error(relay, keys, answer):
    with hostile_simulator(relay, keys, scripted(agents_description(), step_answer=answer)):
        remote = parallel_env(f"{AGENT_ENVS}:arrivals")
        remote.reset(seed=0)
        expect_bad_payload(lambda: remote.step({"base": np.zeros(2, np.int64), "scout_0": 0}))


@pytest.fixture(scope="module")
def raw_trainer(relay, pool) -> Iterator[Any]:
    """A raw trainer connection of the module's workspace (real simulators behind it)."""
    ws = greeted(relay, Hello(role="trainer", api_key=pool.key), source="127.0.0.1")
    yield ws
    ws.close()


_seqs = iter(range(1000, 100_000))


def made(ws: Any, arg: dict, op: int = Op.MAKE_VEC) -> tuple[int, dict]:
    channel = open_channel(ws, next(_seqs))
    return channel, request(ws, op, channel, next(_seqs), arg)


ARRIVALS = {"id": "arrivals", "agents": "parallel", "num_envs": 2, "factory": {"target": f"{AGENT_ENVS}:arrivals"}}
BAD_MAKES = {
    "unknown kind": ({**ARRIVALS, "agents": "swarm"}, Op.MAKE_VEC, "bad_payload"),
    "aec on a vector make": ({**ARRIVALS, "agents": "aec"}, Op.MAKE_VEC, "bad_payload"),
    "parallel on a single make": (ARRIVALS, Op.MAKE, "bad_payload"),
    "no factory": ({**ARRIVALS, "factory": None}, Op.MAKE_VEC, "bad_payload"),
    "factory off the allowlist": ({**ARRIVALS, "factory": {"target": "os:system", "kwargs": {}}}, Op.MAKE_VEC,
                                  "register_refused"),
    "code in the kwargs": ({**ARRIVALS, "factory": {"target": f"{AGENT_ENVS}:arrivals",
                                                    "kwargs": {"entry_point": "os:system"}}}, Op.MAKE_VEC,
                           "bad_payload"),
    "a function of an allowed module the allowlist does not name": (
        {**ARRIVALS, "factory": {"target": f"{AGENT_ENVS}:_base_space"}}, Op.MAKE_VEC, "register_refused"),
    "a factory making no multi-agent env": (
        {**ARRIVALS, "factory": {"target": f"{AGENT_ENVS}:single_agent"}}, Op.MAKE_VEC, "env_error"),
    "too many envs": ({**ARRIVALS, "num_envs": 10_000}, Op.MAKE_VEC, "capacity"),
}


@pytest.mark.parametrize("arg,op,code", BAD_MAKES.values(), ids=BAD_MAKES.keys())
def test_a_hostile_multi_agent_make_is_refused_with_a_code(raw_trainer, arg, op, code):
    _, answer = made(raw_trainer, arg, op)
    assert answer["code"] == code, answer
    _, answer = made(raw_trainer, ARRIVALS)  # and the simulator still makes what is allowed
    assert answer["code"] == "ok" and answer["value"]["agents"]["possible_agents"][0] == "base"


BAD_CALLS = {
    "step not a list": (Op.STEP, {"step": {}}, "bad_payload"),
    "step entries short": (Op.STEP, [None], "bad_payload"),
    "step entry not a map": (Op.STEP, [7, None], "bad_payload"),
    "step entry of neither kind": (Op.STEP, [{"jump": {}}, None], "bad_payload"),
    "actions not a map": (Op.STEP, [{"step": [1, 2]}, None], "bad_payload"),
    "reset seed not an int": (Op.RESET, [{"seed": "x"}, None], "bad_payload"),
    "reset options not a map": (Op.RESET, [{"options": [1]}, None], "bad_payload"),
    "a private attribute": (Op.ATTR, {"do": "get", "name": "_rng"}, "unsupported"),
    "an env index out of range": (Op.ATTR, {"do": "call", "name": "state", "index": 5}, "bad_payload"),
    "an index that is no int": (Op.ATTR, {"do": "call", "name": "state", "index": True}, "bad_payload"),
    "reflection": (Op.ATTR, {"do": "call", "name": "__getattribute__", "args": ["_rng"]}, "unsupported"),
}


@pytest.mark.parametrize("op,arg,code", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_hostile_multi_agent_requests_get_coded_errors_and_the_env_stays(raw_trainer, op, arg, code):
    channel, answer = made(raw_trainer, ARRIVALS)
    assert answer["code"] == "ok"
    assert request(raw_trainer, op, channel, next(_seqs), arg)["code"] == code
    answer = request(raw_trainer, Op.RESET, channel, next(_seqs), [{"seed": 1}, None])
    assert answer["code"] == "ok" and answer["value"][1] is None and answer["value"][0][2] == ["base", "scout_0"]
    assert request(raw_trainer, Op.CLOSE, channel, next(_seqs), None)["code"] == "ok"


def test_observe_of_an_unknown_agent_is_a_coded_error(raw_trainer):
    arg = {"id": "tictactoe", "agents": "aec", "factory": {"target": "pettingzoo.classic.tictactoe_v3:env"}}
    channel, answer = made(raw_trainer, arg, Op.MAKE)
    assert answer["code"] == "ok" and answer["value"]["agents"]["kind"] == "aec"
    request(raw_trainer, Op.RESET, channel, next(_seqs), {"seed": 0})
    observe = {"do": "call", "name": "observe", "args": ["player_9"]}
    assert request(raw_trainer, Op.ATTR, channel, next(_seqs), observe)["code"] == "bad_payload"
    step = request(raw_trainer, Op.STEP, channel, next(_seqs), {"action": 4})
    assert step["code"] == "ok" and step["value"]["selected"] == "player_2"


def test_a_simulator_keeping_env_attributes_to_itself_still_answers_pettingzoos_own_calls(relay, keys):
    pool = SimulatorPool(relay, keys.take())
    pool.start(1, allow=MULTI_AGENT_ALLOW, extra_args=("--no-env-attributes",))
    ws = greeted(relay, Hello(role="trainer", api_key=pool.key), source="127.0.0.1")
    try:
        channel, answer = made(ws, ARRIVALS)
        assert answer["code"] == "ok"
        request(ws, Op.RESET, channel, next(_seqs), [{"seed": 1}, None])
        state = request(ws, Op.ATTR, channel, next(_seqs), {"do": "call", "name": "state"})
        assert state["code"] == "ok" and state["value"].tolist() == [0, 2]
        got = request(ws, Op.ATTR, channel, next(_seqs), {"do": "get", "name": "max_steps"})
        assert got["code"] == "unsupported" and "--no-env-attributes" in got["message"]
    finally:
        ws.close()
        pool.stop()


BAD_TURNS = {
    "unhashable selected agent": {"selected": ["player_1"]},
    "rewards not numbers": {"rewards": {"player_1": "x"}},
    "an info that is no map": {"infos": {"player_1": 3}},
}


@pytest.mark.parametrize("fields", BAD_TURNS.values(), ids=BAD_TURNS.keys())
def test_a_malformed_aec_turn_is_a_coded_error(relay, keys, fields):
    from remoterl_ray.simulator.agents import HostedTurns

    hosted = HostedTurns([tictactoe_v3.env()])
    hosted.reset({"seed": 0})
    description, turn = hosted.describe(), {**hosted.turn(), **fields}

    def answer(op: int, channel: int, req: Any) -> Any:
        return description if op == Op.MAKE else turn

    with hostile_simulator(relay, keys, answer):
        expect_bad_payload(lambda: env("pettingzoo.classic.tictactoe_v3:env").reset(seed=0))


def test_renders_of_the_wrong_count_are_a_coded_error(relay, keys):
    answer = scripted(agents_description())

    def renders(op: int, channel: int, req: Any) -> Any:
        return [np.zeros((2, 2, 3), np.uint8)] * 3 if op == Op.RENDER else answer(op, channel, req)

    with hostile_simulator(relay, keys, renders):
        remote = parallel_env(f"{AGENT_ENVS}:arrivals")
        remote.reset(seed=0)
        expect_bad_payload(remote.render, "1 entries")


def test_a_simulator_sends_defaultdicts_only_to_a_trainer_that_reads_them(raw_trainer):
    """multiwalker answers its rewards in a defaultdict(int): as one to a trainer that lists
    ext 6 among what it reads, as a plain map to one from before (which would refuse ext 6)."""
    make = {"id": "walkers", "agents": "parallel", "num_envs": 1,
            "factory": {"target": "pettingzoo.sisl.multiwalker_v9:parallel_env", "kwargs": {"n_walkers": 2}}}  # fmt: skip
    for codecs, expected in (([], dict), (["lz4", codec.READS_DEFAULTDICT], defaultdict)):
        channel, answer = made(raw_trainer, {**make, "codecs": codecs})
        assert answer["code"] == "ok"
        request(raw_trainer, Op.RESET, channel, next(_seqs), [{"seed": 0}])
        actions = {f"walker_{i}": np.zeros(4, np.float32) for i in range(2)}
        step = request(raw_trainer, Op.STEP, channel, next(_seqs), [{"step": actions}])
        assert step["code"] == "ok" and type(step["value"][0][1]) is expected
        request(raw_trainer, Op.CLOSE, channel, next(_seqs), None)


def test_a_description_of_fewer_envs_than_the_shard_is_a_coded_error(relay, keys):
    with hostile_simulator(relay, keys, scripted(agents_description())):  # describes one env, whatever the shard
        make = {"factory": {"target": f"{AGENT_ENVS}:arrivals"}}
        expect_bad_payload(lambda: AgentEnvs(remoterl_ray.current_session(), "arrivals", 3, make), "1 envs for a shard of 3")


def test_an_rllib_step_without_all_is_a_coded_error(relay, keys):
    with hostile_simulator(relay, keys, scripted(agents_description(), step_answer=[[{}, {}, {}, {}, {}, ["base"]]])):
        remote = AgentEnvs(remoterl_ray.current_session(), "arrivals", 1, {"factory": {"target": "x:y"}})
        remote.reset([0], None)
        expect_bad_payload(lambda: remote.step([{"step": {}}], all_key=True), "__all__")


def test_framework_methods_of_a_multi_agent_env_are_not_the_envs_to_call(raw_trainer):
    """RLlib's ``MultiAgentEnv.to_base_env(remote_envs=True)`` would start Ray and actors on the
    simulator; ``with_agent_groups`` builds other envs. Only what the env's own class defines
    (and PettingZoo's and RLlib's calls that drive an env) may be called."""
    creator = {"target": f"{AGENT_ENVS}:ArrivalsMultiAgent", "env_config": {}}
    channel, answer = made(raw_trainer, {"id": "arrivals", "agents": "parallel", "num_envs": 1, "creator": creator})
    assert answer["code"] == "ok"
    for name, kwargs in (("to_base_env", {"remote_envs": True, "num_envs": 100}), ("with_agent_groups", {})):
        call = {"do": "call", "name": name, "kwargs": kwargs}
        refused = request(raw_trainer, Op.ATTR, channel, next(_seqs), call)
        assert refused["code"] == "unsupported" and "base class" in refused["message"], refused
    ids = request(raw_trainer, Op.ATTR, channel, next(_seqs), {"do": "call", "name": "get_agent_ids"})
    assert ids["code"] == "ok" and ids["value"] == set() or ids["code"] == "unsupported"  # a set is no data
    assert request(raw_trainer, Op.CLOSE, channel, next(_seqs), None)["code"] == "ok"


def test_an_env_refused_for_its_kind_is_closed_and_pettingzoo_classes_are_no_registration(relay, keys):
    pool = SimulatorPool(relay, keys.take())
    pool.start(1, allow=MULTI_AGENT_ALLOW)
    ws = greeted(relay, Hello(role="trainer", api_key=pool.key), source="127.0.0.1")
    try:
        channel, answer = made(ws, ARRIVALS)
        count = {"do": "call", "name": "refused_closed"}
        assert request(ws, Op.ATTR, channel, next(_seqs), count)["value"] == 0
        refused = {**ARRIVALS, "num_envs": 2, "factory": {"target": f"{AGENT_ENVS}:not_multi_agent"}}
        _, answer = made(ws, refused)
        assert answer["code"] == "env_error" and answer["remote_type"] == "TypeError"
        assert request(ws, Op.ATTR, channel, next(_seqs), count)["value"] == 1  # built, refused and closed
        # A PettingZoo env class is an env class for multi-agent makes only, not for a Gymnasium registration.
        registration = {"id": "Arrivals-v0", "entry_point": f"{AGENT_ENVS}:Arrivals"}
        other = open_channel(ws, next(_seqs))
        assert request(ws, Op.REGISTER, other, next(_seqs), registration)["code"] == "register_refused"
    finally:
        ws.close()
        pool.stop()


def test_envs_made_again_report_their_episodes_truncated_and_an_aec_loop_is_told():
    """The relay crashes and the simulator of some envs is gone for good: after the resume
    window they are made again on the other simulator. A vector step reports each of
    them truncated, also those a single env's call did not reach, and an AEC step raises."""
    with CrashableRelay("ma-made-again", 0) as site:
        (first,) = site.pool.start(1, allow=MULTI_AGENT_ALLOW)
        assert init_trainer(site.relay, site.key, connect_timeout=5, simulator_wait=20, resume_window=2,
                            num_workers=1, num_env_runners=2)  # fmt: skip
        game = env("pettingzoo.classic.tictactoe_v3:env")  # on the first simulator, the one to go
        site.pool.start(1, allow=MULTI_AGENT_ALLOW)
        assert remoterl_ray.current_session().links.wait_for_simulators(2, 20) == 2
        call = {"target": "ray.rllib.examples.envs.classes.multi_agent:MultiAgentCartPole",
                "env_config": {"num_agents": 2}, "worker_index": 0, "num_workers": 0}  # fmt: skip
        vector = RemoteVectorMultiAgentEnv(AgentEnvs(remoterl_ray.current_session(), "ma", 4, {"creator": call}), "ma")
        assert vector.remote._remote.sizes == [2, 2]
        vector.reset(seed=0)
        game.reset(seed=0)
        first.kill()
        site.crash()
        obs, infos = vector.envs[0].reset(seed=3)  # one env's call meets the envs made again
        assert set(obs) == {0, 1}
        obs, rewards, terminateds, truncateds, infos = vector.step([{0: 0, 1: 0}] * 4)
        for i in range(1, 4):  # the others lost their episodes: truncated, at their new first observations
            assert truncateds[i] == {0: True, 1: True, "__all__": True} and not terminateds[i]["__all__"]
            assert infos[i][0][RECONNECTED] and rewards[i] == {0: 0.0, 1: 0.0}
        assert not truncateds[0]["__all__"]  # env 0 was reset after it was made again: it stepped
        with pytest.raises(EnvsMadeAgainError):
            game.step(0)
        game.reset(seed=1)
        game.step(4)  # plays on after a reset
        vector.close()
        game.close()

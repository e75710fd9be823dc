"""Attacks on the fidelity changes (op ``attr``, per-env infos, user and Graph
spaces, remote error classes, mirrored registrations by qualname, specs
field for field), replayed against a real relay, real simulator processes and
a real trainer where the boundary is a network one.

Each test states what the threat model promises; a failing test is a finding.
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from attackers import Refuse, ScriptedSimulator, greeted, open_channel, request
from conftest import SimulatorPool, init_trainer, local_gym, new_key
from remoterl_ray.local import start_relay
from remoterl_ray.protocol.errors import ErrorCode, ProtocolError, RegistrationRefusedError
from remoterl_ray.protocol.frames import Op
from remoterl_ray.protocol.messages import Hello
from remoterl_ray.simulator.hosted import Hosted
from remoterl_ray.simulator.vectors import make_vector
from remoterl_ray.trainer.batching import MAX_INFO_FILL
from remoterl_ray.trainer.remote_vector_env import RemoteVectorEnv
from remoterl_ray.trainer.session import TrainerSession
from remoterl_ray.trainer.settings import TrainerSettings


# -- helpers ---------------------------------------------------------------------


def single_description() -> dict[str, Any]:
    with local_gym():  # a trainer may be initialized in this process: build the real, local env
        env = gym.make("CartPole-v1")
    try:
        return Hosted(env, vector=False, num_envs=1).describe()
    finally:
        env.close()


def vector_description(num_envs: int, vector_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a real simulator describes for a sync CartPole shard answering infos per env."""
    with local_gym():
        env, mode = make_vector("CartPole-v1", num_envs, mode="sync", kwargs={}, vector_kwargs=dict(vector_kwargs or {}),
                                per_env_infos=True, allow_processes=False)  # fmt: skip
    try:
        return Hosted(env, vector=True, num_envs=num_envs, mode=mode).describe()
    finally:
        env.close()


def session_for(relay: Any, key: str, **kwargs: Any) -> TrainerSession:
    settings = TrainerSettings(relay_url=relay.url, api_key=key, timeout=20, make_timeout=20, **kwargs)
    return TrainerSession(settings)


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


@pytest.fixture(scope="module")
def own_relay():
    """A relay of this module's own, with a few keys (each test takes one)."""
    keys = [new_key(f"fid{i}") for i in range(16)]
    relay = start_relay(api_keys=keys)
    relay.fidelity_keys = keys  # type: ignore[attr-defined]
    yield relay
    relay.stop()


_taken = iter(range(16))


def take_key(relay: Any) -> str:
    return relay.fidelity_keys[next(_taken)]


# -- 1. a simulator's spec chooses code the trainer runs ------------------------------


def test_a_simulators_spec_never_chooses_code_the_trainer_runs(own_relay, tmp_path, trainer_cleanup):
    """The spec a simulator describes now carries its entry point and kwargs "field for
    field". A trainer that registered its id with a class (mirrored by qualname) and makes
    the env again from its spec (``env.spec.make()``, as Gymnasium's env checker does)
    falls back to a *local* make when a simulator answers ``registration_refused``, and
    that local make imports and calls the simulator's entry point with its kwargs."""
    import remoterl_testenvs

    key = take_key(own_relay)
    marker = tmp_path / "pwned"
    registers: list[Any] = []

    def answer(op: int, channel: int, req: Any) -> Any:
        if op == Op.REGISTER:
            registers.append(req)
            if len(registers) == 1:
                return {"registered": True}
            return Refuse(RegistrationRefusedError("not on this simulator").to_wire())
        if op == Op.MAKE:
            description = single_description()
            description["spec"] = {**description["spec"], "id": "Pwnable-v0", "entry_point": "os:system",
                                   "kwargs": {"command": f"touch {marker}"}}  # fmt: skip
            return description
        return None

    sim = ScriptedSimulator(own_relay, key, answer)
    try:
        assert init_trainer(own_relay, key)
        gym.register("Pwnable-v0", entry_point=remoterl_testenvs.CounterEnv)  # mirrored as module:qualname
        env = gym.make("Pwnable-v0")
        try:
            env.spec.make()  # what gymnasium.utils.env_checker.check_env does for determinism and render checks
        except Exception:
            pass
        assert not marker.exists(), "the simulator's spec entry point 'os:system' ran on the trainer"
    finally:
        sim.close()
        gym.registry.pop("Pwnable-v0", None)


# -- 2. per-env infos from a hostile simulator ------------------------------------------


def _vector_answers(infos_for: Any) -> Any:
    """A CartPole-shaped sync shard answering infos per env; ``infos_for(n)`` picks them."""
    sizes: dict[int, int] = {}

    def answer(op: int, channel: int, req: Any) -> Any:
        if op == Op.MAKE_VEC:
            sizes[channel] = req["num_envs"]
            return vector_description(req["num_envs"], req.get("vector_kwargs"))
        n = sizes.get(channel, 1)
        obs = np.zeros((n, 4), np.float32)
        if op == Op.RESET:
            return [obs, infos_for(n)]
        if op == Op.STEP:
            return [obs, np.ones(n), np.zeros(n, bool), np.zeros(n, bool), infos_for(n)]
        return None

    return answer


@pytest.mark.parametrize(
    "infos",
    [
        [{"x": 1}, {"x": "text"}, {}],  # int then str: ValueError from numpy
        [{"x": 1}, {"x": {"a": 1}}, {}],  # a number then a map: AttributeError ('ndarray' has no 'get')
        [{"x": np.zeros(3)}, {"x": np.zeros(4)}, {}],  # rows of different shapes: ValueError (broadcast)
        [{"x": 1.5, "_x": np.zeros(2)}, {}, {}],  # a value under the mask's name: ValueError
    ],
    ids=["int-then-str", "number-then-map", "ragged-rows", "value-over-mask"],
)
def test_malformed_per_env_infos_are_a_coded_error(own_relay, infos):
    """Per-env infos are batched on the trainer with Gymnasium's ``_add_info``; what a
    hostile shard sends there must end as ``bad_payload``, never a bare exception."""
    key = take_key(own_relay)
    sim = ScriptedSimulator(own_relay, key, _vector_answers(lambda n: [dict(i) for i in infos[:n]]))
    session = session_for(own_relay, key)
    try:
        assert session.links.wait_for_simulators(1, 10) == 1
        envs = RemoteVectorEnv(session, "CartPole-v1", 3)
        try:
            with pytest.raises(ProtocolError) as caught:
                envs.reset(seed=0)
            assert caught.value.code is ErrorCode.BAD_PAYLOAD
        finally:
            envs.close()
    finally:
        session.close()
        sim.close()


def test_per_env_infos_cannot_make_the_trainer_fill_beyond_its_bound(own_relay):
    """docs/security.md: "what the trainer makes up for envs whose shard lacks a key is
    bounded" (MAX_INFO_FILL, 4 M elements, checked by ``merge_infos``). Answered per env,
    Gymnasium's ``_add_info`` on the trainer allocates a row for every env of the vector
    from the first env's value: one 1 MiB info row from one env of 16 makes the trainer
    make up 15 M elements."""
    key = take_key(own_relay)
    row = np.zeros(1 << 20, np.uint8)
    sim = ScriptedSimulator(own_relay, key, _vector_answers(lambda n: [{"frame": row}] + [{} for _ in range(n - 1)]))
    session = session_for(own_relay, key)
    try:
        assert session.links.wait_for_simulators(1, 10) == 1
        envs = RemoteVectorEnv(session, "CartPole-v1", 16)
        try:
            try:
                _, info = envs.reset(seed=0)
            except ProtocolError as exc:
                assert exc.code is ErrorCode.BAD_PAYLOAD
            else:
                made_up = info["frame"].size - row.size  # one env reported it, 15 did not
                assert made_up <= MAX_INFO_FILL, f"the trainer made up {made_up} info elements from a 1 MiB answer"
        finally:
            envs.close()
    finally:
        session.close()
        sim.close()


def test_a_12_mib_per_env_info_is_a_coded_error_not_a_24_gib_allocation(own_relay):
    """One env's info array, sized by the vector (here 2048 envs): ``np.zeros((num_envs,
    *shape))`` of 24 GiB. It must be a ``bad_payload``, not a bare ``MemoryError`` (nor,
    where the kernel lets it through, 24 GiB of address space)."""
    key = take_key(own_relay)
    row = np.zeros(12 << 20, np.uint8)
    sim = ScriptedSimulator(own_relay, key, _vector_answers(lambda n: [{"frame": row}] + [{} for _ in range(n - 1)]),
                  max_envs=4096)  # fmt: skip
    session = session_for(own_relay, key)
    try:
        assert session.links.wait_for_simulators(1, 10) == 1
        envs = RemoteVectorEnv(session, "CartPole-v1", 2048)
        try:
            with pytest.raises(ProtocolError) as caught:
                envs.reset(seed=0)
            assert caught.value.code is ErrorCode.BAD_PAYLOAD
        finally:
            envs.close()
    finally:
        session.close()
        sim.close()


def test_sb3_done_env_without_final_obs_is_a_coded_error(own_relay, trainer_cleanup):
    """SB3's VecEnv takes each env's info as the simulator sent it: a done env whose
    info lacks ``final_obs``/``final_info`` must be ``bad_payload``, not a bare KeyError."""
    from stable_baselines3.common.env_util import make_vec_env

    key = take_key(own_relay)
    sizes: dict[int, int] = {}

    def answer(op: int, channel: int, req: Any) -> Any:
        if op == Op.MAKE:
            return single_description()
        if op == Op.MAKE_VEC:
            sizes[channel] = req["num_envs"]
            return vector_description(req["num_envs"], req.get("vector_kwargs"))
        n = sizes.get(channel, 1)
        obs = np.zeros((n, 4), np.float32)
        if op == Op.RESET:
            return [obs, [{} for _ in range(n)]]
        if op == Op.STEP:  # every env "terminated", and no final_obs anywhere
            return [obs, np.ones(n), np.ones(n, bool), np.zeros(n, bool), [{} for _ in range(n)]]
        return None

    sim = ScriptedSimulator(own_relay, key, answer)
    try:
        assert init_trainer(own_relay, key)
        venv = make_vec_env("CartPole-v1", n_envs=2)
        try:
            venv.reset()
            with pytest.raises(ProtocolError) as caught:
                venv.step(np.zeros(2, np.int64))
            assert caught.value.code is ErrorCode.BAD_PAYLOAD
        finally:
            venv.close()
    finally:
        sim.close()


def test_per_env_observation_spaces_that_do_not_batch_are_a_coded_error(own_relay):
    """``observation_spaces`` (observation_mode='different') come from the simulator;
    spaces Gymnasium cannot batch together must be ``bad_payload``, not an AssertionError."""
    key = take_key(own_relay)

    def answer(op: int, channel: int, req: Any) -> Any:
        if op == Op.MAKE_VEC:
            description = vector_description(req["num_envs"])
            description["observation_spaces"] = [
                {"type": "Box", "low": 0.0, "high": 1.0, "shape": [4 + i], "dtype": "<f4"}
                for i in range(req["num_envs"])
            ]
            return description
        return None

    sim = ScriptedSimulator(own_relay, key, answer)
    session = session_for(own_relay, key)
    try:
        assert session.links.wait_for_simulators(1, 10) == 1
        with pytest.raises(ProtocolError) as caught:
            RemoteVectorEnv(session, "CartPole-v1", 2).close()
        assert caught.value.code is ErrorCode.BAD_PAYLOAD
    finally:
        session.close()
        sim.close()


# -- 3. op attr: what a trainer can make a simulator do ------------------------------


def test_attr_each_with_repeated_indices_cannot_blow_up_the_simulator(own_relay):
    """``scope: each`` takes any list of valid indices, repeats included, and the result
    is packed (twice) before its size is checked: a 6 KB request for FrozenLake 8x8's
    public ``P`` (11.5 KB packed) 6,000 times makes the simulator build ~70 MB (about
    140 MiB at its peak), and the 262,144 values a payload may hold would make it ~3 GB
    (~6 GiB at the peak, for a minute of the simulator's only thread). The simulator's
    peak memory must stay within a few frames."""
    key = take_key(own_relay)
    pool = SimulatorPool(own_relay, key)
    try:
        [sim] = pool.start(1)
        ws = greeted(own_relay, Hello(role="trainer", api_key=key), "127.0.0.2")
        channel = open_channel(ws, 1)
        made = request(ws, Op.MAKE_VEC, channel, 2, {"id": "FrozenLake-v1", "num_envs": 1, "vectorization_mode": "sync",
                                                    "kwargs": {"map_name": "8x8"}})  # fmt: skip
        assert made["code"] == "ok", made
        one = request(ws, Op.ATTR, channel, 3, {"do": "get", "scope": "each", "indices": [0], "name": "P"})
        assert one["code"] == "ok", one
        before = peak_rss_mb(sim.pid)
        started = time.monotonic()
        answer = request(ws, Op.ATTR, channel, 4,
                         {"do": "get", "scope": "each", "indices": [0] * 6_000, "name": "P"}, timeout=60)  # fmt: skip
        took = time.monotonic() - started
        grew = peak_rss_mb(sim.pid) - before
        ws.close()
        assert sim.alive()
        assert grew < 64, f"one 6 KB attr request grew the simulator by {grew:.0f} MiB in {took:.1f} s ({answer.get('code')})"
    finally:
        pool.stop()


def test_attr_cannot_reach_private_names_through_an_async_vector_envs_call_async(own_relay):
    """Names must be public and the reflection helpers (call, get_attr, set_attr, ...)
    cannot be called; but ``AsyncVectorEnv.call_async(name, ...)`` is one too: with
    ``--allow-processes`` a trainer reads (and writes) any private attribute of its env
    (here TimeLimit's ``_max_episode_steps``) through ``__getattribute__``."""
    key = take_key(own_relay)
    pool = SimulatorPool(own_relay, key)
    try:
        [sim] = pool.start(1, extra_args=("--allow-processes",))
        ws = greeted(own_relay, Hello(role="trainer", api_key=key), "127.0.0.2")
        channel = open_channel(ws, 1)
        made = request(ws, Op.MAKE_VEC, channel, 2, {"id": "CartPole-v1", "num_envs": 1, "vectorization_mode": "async"})
        assert made["code"] == "ok", made
        asked = request(ws, Op.ATTR, channel, 3, {"do": "call", "scope": "self", "name": "call_async",
                                                  "args": ["__getattribute__", "_max_episode_steps"]})  # fmt: skip
        read = request(ws, Op.ATTR, channel, 4, {"do": "call", "scope": "self", "name": "call_wait"})
        request(ws, Op.CLOSE, channel, 5, None)
        ws.close()
        assert sim.alive()
        assert asked["code"] != "ok" and read.get("value") != [500], (asked, read)
    finally:
        pool.stop()

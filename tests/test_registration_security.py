"""What a trainer's registrations and creators can make a simulator run.

Attacks go through real processes: the session relay, real simulator
processes, and raw WebSocket trainers speaking the wire protocol (an attacker
does not use our trainer code). The honest trainer is a real trainer session.
The rules under test: mirrored registrations are scoped to the channel that
sent them, never shadow an id the simulator already has, resolve only to
``gymnasium.Env`` subclasses from allowed modules or to functions the
allowlist names, and no kwargs carry entry points; RLlib creators follow the
same rules.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from conftest import TEST_ENVS_MODULE, SimulatorPool
from template_envs import TinyEnv, make_tiny
from websockets.sync.client import connect

from remoterl_ray.protocol import codec
from remoterl_ray.protocol.errors import ProtocolError, RegistrationRefusedError
from remoterl_ray.protocol.frames import HEADER_SIZE, Kind, Op, pack, unpack_header
from remoterl_ray.protocol.messages import Hello, Open, Opened, control_frame, encode_control, parse_control
from remoterl_ray.simulator.allowlist import Allowlist
from remoterl_ray.simulator.entry_points import resolve_entry_point
from remoterl_ray.simulator.hosted import EnvTable
from remoterl_ray.trainer.remote_env import RemoteEnv
from remoterl_ray.trainer.session import TrainerSession
from remoterl_ray.trainer.settings import TrainerSettings

PKG = "template_envs"  # re-exports gymnasium's register, like Gymnasium's env-package template
WAIT = 30.0  # seconds any single answer may take


@pytest.fixture(scope="module")
def pkg_sim(relay, keys):
    """A workspace whose one simulator allows the template package, its
    ``make_tiny`` by name, and the test envs."""
    key = keys.take()
    pool = SimulatorPool(relay, key)
    pool.start(1, allow=(PKG, f"{PKG}:make_tiny", TEST_ENVS_MODULE))
    yield key
    pool.stop()


@pytest.fixture(scope="module")
def gymnasium_sim(relay, keys):
    """A workspace whose one simulator runs with ``--allow gymnasium``."""
    key = keys.take()
    pool = SimulatorPool(relay, key)
    pool.start(1, allow=("gymnasium",))
    yield key
    pool.stop()


class RawTrainer:
    """A trainer that speaks the wire protocol by hand, as an attacker would."""

    def __init__(self, relay, key: str) -> None:
        self.ws = connect(f"{relay.url}/ws", compression=None, max_size=None, legacy=True, proxy=None)
        self.seq = 0
        self.ws.send(control_frame(Hello(role="trainer", api_key=key)))
        header, _ = self._recv(lambda h: h.kind in (Kind.CONTROL, Kind.ERROR))
        assert header.kind == Kind.CONTROL, "the relay refused the hello"

    def _recv(self, wanted) -> tuple[Any, memoryview]:
        deadline = time.monotonic() + WAIT
        while True:
            frame = self.ws.recv(timeout=max(0.01, deadline - time.monotonic()))
            header = unpack_header(frame)
            if wanted(header):
                return header, memoryview(frame)[HEADER_SIZE:]

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def open(self) -> int:
        seq = self._next_seq()
        self.ws.send(pack(Kind.CONTROL, Op.NONE, 0, seq, encode_control(Open(envs=1))))
        _, payload = self._recv(lambda h: h.seq == seq)
        opened = parse_control(payload)
        assert isinstance(opened, Opened), opened
        return opened.shards[0].channel

    def call(self, op: Op, channel: int, arg: Any) -> tuple[str, Any]:
        """("ok", answer) or (error code, error message)."""
        seq = self._next_seq()
        self.ws.send(pack(Kind.REQUEST, op, channel, seq, codec.packb(arg)))
        header, payload = self._recv(lambda h: h.seq == seq and h.kind in (Kind.RESPONSE, Kind.ERROR))
        value = codec.unpackb(payload)
        if header.kind == Kind.ERROR:
            return value["code"], value["message"]
        return "ok", value

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def raw_trainers(relay):
    """``connect(key)`` gives a raw trainer; all are closed after the test."""
    made: list[RawTrainer] = []

    def connect_as(key: str) -> RawTrainer:
        made.append(RawTrainer(relay, key))
        return made[-1]

    yield connect_as
    for trainer in made:
        trainer.close()


def staged_attack(trainer: RawTrainer, stage_entry: str, target_id: str, command: str) -> list[tuple[str, Any]]:
    """The three requests of the attack: register a stage whose entry point is
    ``register``, make it (which would register ``target_id`` -> os:system),
    then make ``target_id`` with a shell command."""
    channel = trainer.open()
    answers = [
        trainer.call(Op.REGISTER, channel, {
            "id": "Stage-v0", "entry_point": stage_entry,
            "kwargs": {"id": target_id, "entry_point": "os:system"}, "spec": {},
        }),
        trainer.call(Op.MAKE, channel, {"id": "Stage-v0", "kwargs": {}}),
    ]
    answers.append(trainer.call(Op.MAKE, trainer.open(), {"id": target_id, "kwargs": {"command": command}}))
    return answers


def codes(answers: list[tuple[str, Any]]) -> list[str]:
    return [code for code, _ in answers]


def assert_entry_point_refused(trainer: RawTrainer, entry: str) -> None:
    """``entry`` itself is refused, not only the kwargs that carry os:system."""
    code, message = trainer.call(Op.REGISTER, trainer.open(), {
        "id": "Stage-v1", "entry_point": entry, "kwargs": {"id": "Harmless-v0"}, "spec": {},
    })
    assert code == "register_refused" and "function" in message, message


# -- attacks on real processes ------------------------------------------------------


def test_a_reexported_register_cannot_run_shell_commands(relay, pkg_sim, raw_trainers, tmp_path):
    marker = tmp_path / "pwned"
    trainer = raw_trainers(pkg_sim)
    answers = staged_attack(trainer, f"{PKG}:register", "Pwn-v0", f"touch {marker}")
    assert codes(answers) == ["register_refused", "unknown_env", "unknown_env"], answers
    assert not marker.exists()
    assert_entry_point_refused(trainer, f"{PKG}:register")


@pytest.mark.parametrize("stage_entry", ["gymnasium:register", "gymnasium.envs.registration:register"])
def test_allowing_gymnasium_does_not_allow_its_register(relay, gymnasium_sim, raw_trainers, tmp_path, stage_entry):
    marker = tmp_path / "pwned"
    trainer = raw_trainers(gymnasium_sim)
    answers = staged_attack(trainer, stage_entry, "Pwn-v0", f"touch {marker}")
    assert codes(answers) == ["register_refused", "unknown_env", "unknown_env"], answers
    assert not marker.exists()
    assert_entry_point_refused(trainer, stage_entry)


def honest_cartpole_rollout(relay, key: str) -> list[np.ndarray]:
    """A real trainer session makes CartPole-v1 on the workspace's simulator."""
    session = TrainerSession(TrainerSettings(relay_url=relay.url, api_key=key, timeout=WAIT))
    try:
        assert session.links.wait_for_simulators(1, WAIT) == 1
        env = RemoteEnv(session, "CartPole-v1")
        try:
            return rollout(env)
        finally:
            env.close()
    finally:
        session.close()


def rollout(env: gym.Env) -> list[np.ndarray]:
    obs, _ = env.reset(seed=7)
    out = [np.asarray(obs)]
    for action in (0, 1, 1, 0, 1):
        out.append(np.asarray(env.step(action)[0]))
    return out


def test_registry_ids_cannot_be_poisoned_for_the_next_trainer(relay, pkg_sim, raw_trainers, tmp_path):
    attacker = raw_trainers(pkg_sim)
    channel = attacker.open()
    for env_id in ("CartPole-v1", "CartPole"):  # the id itself, and the unversioned name that finds it
        code, answer = attacker.call(Op.REGISTER, channel, {
            "id": env_id, "entry_point": f"{PKG}:TinyEnv", "kwargs": {}, "spec": {},
        })
        assert code == "ok" and answer["registered"] is False, answer
    code, description = attacker.call(Op.MAKE, channel, {"id": "CartPole-v1", "kwargs": {}})
    assert code == "ok" and description["observation_space"]["shape"] == [4]  # the simulator's own CartPole
    marker = tmp_path / "pwned"
    staged_attack(attacker, f"{PKG}:register", "CartPole-v1", f"touch {marker}")
    attacker.close()
    expected = rollout(gym.make("CartPole-v1"))
    got = honest_cartpole_rollout(relay, pkg_sim)
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_array_equal(e, g)
    assert not marker.exists()


def test_registrations_are_scoped_to_their_channel(relay, pkg_sim, raw_trainers):
    a, b = raw_trainers(pkg_sim), raw_trainers(pkg_sim)
    channel_a, channel_b = a.open(), b.open()
    registration = {"id": "Mine-v0", "entry_point": f"{PKG}:TinyEnv", "kwargs": {"start": 5}, "spec": {}}
    assert a.call(Op.REGISTER, channel_a, registration) == ("ok", {"registered": True})
    code, answer = b.call(Op.MAKE, channel_b, {"id": "Mine-v0", "kwargs": {}})
    assert code == "unknown_env", answer
    assert a.call(Op.MAKE, a.open(), {"id": "Mine-v0", "kwargs": {}})[0] == "unknown_env"  # a's other channel
    code, _ = a.call(Op.MAKE, channel_a, {"id": "Mine-v0", "kwargs": {}})
    assert code == "ok"
    code, (obs, _) = a.call(Op.RESET, channel_a, {"seed": 0})
    assert code == "ok" and obs.tolist() == [5.0]  # the registration's kwargs
    # b's own registration of the same id is b's alone, with b's kwargs
    assert b.call(Op.REGISTER, channel_b, dict(registration, kwargs={"start": 9}))[1] == {"registered": True}
    assert b.call(Op.MAKE, channel_b, {"id": "Mine-v0", "kwargs": {}})[0] == "ok"
    assert b.call(Op.RESET, channel_b, {"seed": 0})[1][0].tolist() == [9.0]
    # closing a's env drops a's registration
    assert a.call(Op.CLOSE, channel_a, None) == ("ok", None)
    assert a.call(Op.MAKE, channel_a, {"id": "Mine-v0", "kwargs": {}})[0] == "unknown_env"


def test_functions_run_only_when_the_allowlist_names_them(relay, pkg_sim, raw_trainers):
    trainer = raw_trainers(pkg_sim)
    channel = trainer.open()
    code, message = trainer.call(Op.REGISTER, channel, {
        "id": "Other-v0", "entry_point": f"{PKG}:make_other", "kwargs": {}, "spec": {},
    })
    assert code == "register_refused" and f"--allow {PKG}:make_other" in message, message
    assert trainer.call(Op.REGISTER, channel, {
        "id": "Named-v0", "entry_point": f"{PKG}:make_tiny", "kwargs": {"start": 2}, "spec": {"max_episode_steps": 2},
    }) == ("ok", {"registered": True})
    code, description = trainer.call(Op.MAKE, channel, {"id": "Named-v0", "kwargs": {}})
    assert code == "ok" and description["spec"]["max_episode_steps"] == 2
    assert trainer.call(Op.RESET, channel, {"seed": 0})[1][0].tolist() == [2.0]
    for entry in ("os:system", "builtins:eval", f"{PKG}:np", f"{PKG}:gym", "gymnasium:make"):
        code, message = trainer.call(Op.REGISTER, trainer.open(), {
            "id": "Bad-v0", "entry_point": entry, "kwargs": {}, "spec": {},
        })
        assert code == "register_refused", (entry, message)


def test_no_map_from_a_trainer_carries_entry_points(relay, pkg_sim, raw_trainers, tmp_path):
    marker = tmp_path / "pwned"
    trainer = raw_trainers(pkg_sim)
    channel = trainer.open()
    for key in ("entry_point", "vector_entry_point", "additional_wrappers"):
        code, message = trainer.call(Op.REGISTER, channel, {
            "id": "Carry-v0", "entry_point": f"{PKG}:TinyEnv", "kwargs": {key: "os:system"}, "spec": {},
        })
        assert code == "register_refused" and key in message, message
        code, message = trainer.call(Op.MAKE, channel, {"id": "CartPole-v1", "kwargs": {key: "os:system"}})
        assert code == "bad_payload" and key in message, message
        code, message = trainer.call(Op.MAKE_VEC, channel, {
            "id": "Tiny", "num_envs": 1, "kwargs": {},
            "creator": {"target": f"{PKG}:TinyEnv", "env_config": {key: "os:system"}},
        })
        assert code == "bad_payload" and key in message, message
    code, message = trainer.call(Op.REGISTER, channel, {
        "id": "Carry-v0", "entry_point": f"{PKG}:TinyEnv", "kwargs": {}, "spec": {"entry_point": "os:system"},
    })
    assert code == "register_refused", message
    assert trainer.call(Op.MAKE, channel, {"id": "CartPole-v1", "kwargs": {1: 2}})[0] == "bad_payload"
    assert not marker.exists()


@pytest.mark.parametrize(
    "target, expected",
    [("os:system", "register_refused"), (f"{PKG}:register", "register_refused"),
     (f"{PKG}:make_other", "register_refused"), (f"{TEST_ENVS_MODULE}:make_corridor", "register_refused"),
     (f"{PKG}:make_tiny", "ok"), (f"{PKG}:TinyEnv", "ok")],
)
def test_rllib_creators_follow_the_same_rules(relay, pkg_sim, raw_trainers, target, expected):
    trainer = raw_trainers(pkg_sim)
    code, answer = trainer.call(Op.MAKE_VEC, trainer.open(), {
        "id": "Tiny", "num_envs": 1, "kwargs": {}, "creator": {"target": target, "env_config": {"start": 4}},
    })
    assert code == expected, answer


def test_registration_ids_that_name_a_module_are_refused(relay, pkg_sim, raw_trainers):
    trainer = raw_trainers(pkg_sim)
    code, message = trainer.call(Op.REGISTER, trainer.open(), {
        "id": f"{PKG}:Sneaky-v0", "entry_point": f"{PKG}:TinyEnv", "kwargs": {}, "spec": {},
    })
    assert code == "register_refused" and "':'" in message, message


# -- the resolver and the table, in this process ------------------------------------


def test_resolver_accepts_env_classes_of_allowed_modules_and_named_functions():
    allowlist = Allowlist([PKG, f"{PKG}:make_tiny"])
    assert resolve_entry_point(allowlist, f"{PKG}:TinyEnv") is TinyEnv
    assert resolve_entry_point(allowlist, f"{PKG}:make_tiny") is make_tiny
    assert resolve_entry_point(Allowlist([f"{PKG}:make_tiny"]), f"{PKG}:make_tiny") is make_tiny
    assert resolve_entry_point(Allowlist(["gymnasium"]), "gymnasium.envs.classic_control:CartPoleEnv") is (
        gym.envs.classic_control.CartPoleEnv
    )


@pytest.mark.parametrize(
    "allow, target, says",
    [
        ((PKG,), "os:system", "--allow os"),
        ((PKG,), f"{PKG}:register", f"--allow {PKG}:register"),
        ((PKG,), f"{PKG}:make_tiny", f"--allow {PKG}:make_tiny"),
        ((f"{PKG}:make_tiny",), f"{PKG}:TinyEnv", f"--allow {PKG}"),  # naming a function allows only it
        ((f"{PKG}:make_tiny",), f"{PKG}:make_other", f"--allow {PKG}:make_other"),
        (("os:system",), "os:system", "not a gymnasium.Env subclass"),  # named, but a builtin
        (("gymnasium",), "gymnasium:Wrapper", "Wrapper"),
        (("gymnasium",), "gymnasium.spaces:Box", "not a gymnasium.Env subclass"),
        ((PKG,), f"{PKG}:nothing_here", "no attribute"),
        ((PKG,), f"{PKG}.missing:TinyEnv", "cannot be imported"),
        ((PKG,), f"{PKG}:TinyEnv.reset", "malformed"),
        ((PKG,), f"{PKG}", "'module:attr'"),
        ((PKG,), 42, "'module:attr'"),
        ((PKG,), f" {PKG}:TinyEnv", "malformed"),
    ],
)
def test_resolver_refuses_everything_else_and_says_how_to_allow(allow, target, says):
    with pytest.raises(RegistrationRefusedError) as info:
        resolve_entry_point(Allowlist(allow), target)
    assert says in info.value.message


def test_resolver_checks_the_string_before_importing():
    assert "wave" not in sys.modules
    with pytest.raises(RegistrationRefusedError):
        resolve_entry_point(Allowlist([PKG]), "wave:open")
    assert "wave" not in sys.modules


@pytest.mark.parametrize("entry", ["my pkg", "pkg:", ":fn", "pkg:a:b", "pkg.:fn", "pkg:fn.x"])
def test_malformed_allowlist_entries_are_an_error_at_start(entry):
    with pytest.raises(ValueError, match="--allow"):
        Allowlist([entry])


def test_allowlist_entries_mean_what_the_docs_say():
    allowlist = Allowlist(["pkg", "other.mod:make_env"])
    assert allowlist.allows_module("pkg") and allowlist.allows_module("pkg.sub")
    assert not allowlist.allows_module("pkgx") and not allowlist.allows_module("other.mod")
    assert allowlist.names("other.mod", "make_env") and not allowlist.names("other.mod", "make_other")
    allowlist.check_env_id("pkg.sub:Env-v0")  # Gymnasium imports pkg.sub for it
    with pytest.raises(RegistrationRefusedError):
        allowlist.check_env_id("other.mod:Env-v0")


def register(table: EnvTable, channel: int, env_id: str, **extra: Any) -> Any:
    arg = {"id": env_id, "entry_point": f"{PKG}:TinyEnv", "kwargs": {}, "spec": {}, **extra}
    return table.handle(Op.REGISTER, channel, arg)


def test_registrations_are_bounded_per_channel_and_in_total():
    table = EnvTable(Allowlist([PKG]), max_envs=8)
    per_channel = table.registrations.per_channel
    for i in range(per_channel):
        assert register(table, 1, f"Reg{i}-v0") == {"registered": True}
    assert register(table, 1, "Reg0-v0") == {"registered": True}  # replacing one's own needs no room
    with pytest.raises(RegistrationRefusedError, match="at most"):
        register(table, 1, "OneTooMany-v0")
    channel = 2
    while table.registrations.count < table.registrations.total:
        register(table, channel, "Fill-v0")
        channel += 1
    with pytest.raises(RegistrationRefusedError, match="at most"):
        register(table, channel, "Fill-v0")
    table.close(1)  # closing (or detaching) a channel frees its registrations
    assert register(table, channel, "Fill-v0") == {"registered": True}
    table.close_all()
    assert table.registrations.count == 0


def test_a_registered_env_is_made_from_its_spec_without_the_global_registry():
    table = EnvTable(Allowlist([PKG, f"{PKG}:make_tiny"]), max_envs=8)
    register(table, 1, "Scoped-v0", kwargs={"start": 3}, spec={"max_episode_steps": 1})
    description = table.handle(Op.MAKE_VEC, 1, {"id": "Scoped-v0", "num_envs": 2, "kwargs": {}})
    assert description["num_envs"] == 2 and "Scoped-v0" not in gym.registry
    obs, _ = table.handle(Op.RESET, 1, {"seed": 0})
    assert obs.tolist() == [[3.0], [3.0]]
    assert table.handle(Op.STEP, 1, np.array([1, 1]))[3].tolist() == [True, True]  # TimeLimit of 1 step
    table.close_all()


@pytest.mark.parametrize(
    "spec", [{"max_episode_steps": "many"}, {"reward_threshold": "high"}, {"order_enforce": 1}],
)
def test_registration_spec_fields_have_their_types(spec):
    with pytest.raises(ProtocolError):
        register(EnvTable(Allowlist([PKG]), max_envs=8), 1, "Typed-v0", spec=spec)


def test_support_package_really_reexports_register():
    """The attack above needs a package that exposes Gymnasium's register."""
    import template_envs

    assert template_envs.register is gym.register
    assert Path(template_envs.__file__).parent.name == PKG

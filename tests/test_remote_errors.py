"""A remote env's error is also the exception the user would catch locally.

``error_from_wire`` rebuilds an error record as its code's class (``RemoteEnvError``,
``UnknownEnvError``...) which, when ``remote_type`` names a class on the
allowlist (built-in ``Exception`` classes, ``gymnasium.error``, registered
classes), also derives from that class. The record is hostile: these tests
feed it names that must stay plain (``SystemExit``, ``os.system``, very long or
not strings at all) and check nothing is imported by name. Then, end to end
on a real relay and simulator: an unknown id is ``NameNotFound`` as well, an
env's ``TypeError`` is a ``TypeError``, and ids registered with an importable
class or function are mirrored by name for the simulator's allowlist to judge.
"""

from __future__ import annotations

import copy
import pickle
import sys
import types

import gymnasium as gym
import numpy as np
import pytest
from conftest import SimulatorPool, init_trainer
from error_envs import StepCounterEnv, TypeErrorEnv, make_counter, make_counter_unlisted

import remoterl_ray
from remoterl_ray import RegistrationRefusedError, RemoteEnv, RemoteEnvError, RemoteVectorEnv, UnknownEnvError
from remoterl_ray.protocol.errors import (
    AuthenticationError,
    ErrorCode,
    InvalidActionError,
    RemoteRLError,
    SimulatorLostError,
    error_from_wire,
    exception_type_name,
    local_class,
    register_remote_exception,
)
from remoterl_ray.trainer.targets import importable_name

ALLOW = ("error_envs", "error_envs:make_counter")


def env_error(remote_type: object, message: str = "boom", code: str = "env_error") -> RemoteRLError:
    return error_from_wire({"code": code, "message": message, "remote_type": remote_type})


def assert_unchanged(exc: RemoteRLError, cls: type[RemoteRLError], message: str, remote_type: str | None) -> None:
    """What every rebuilt error keeps, whatever else it derives from."""
    assert isinstance(exc, cls) and isinstance(exc, RemoteRLError) and isinstance(exc, RuntimeError)
    assert exc.message == message and exc.code == cls.default_code and exc.remote_type == remote_type
    where = f" (remote {remote_type})" if remote_type else ""
    assert str(exc) == f"[{exc.code.value}] {message}{where}"
    assert exc.args == (message,)


# -- builtins, gymnasium, registered classes -----------------------------------------


@pytest.mark.parametrize("local", [TypeError, ValueError, KeyError, IndexError, ZeroDivisionError,
                                   NotImplementedError, AssertionError, RecursionError, UnicodeError])
def test_builtin_errors_are_also_the_local_class(local):
    exc = env_error(local.__name__)
    assert isinstance(exc, local)
    assert_unchanged(exc, RemoteEnvError, "boom", local.__name__)
    with pytest.raises(local):
        raise exc
    assert type(env_error(local.__name__)) is type(exc), "one class per pair, made once"


@pytest.mark.parametrize("name", ["NameNotFound", "VersionNotFound", "NamespaceNotFound", "DeprecatedEnv"])
def test_gymnasium_lookup_errors_are_unknown_env_and_the_gymnasium_class(name):
    local = getattr(gym.error, name)
    exc = env_error(f"gymnasium.error.{name}", code="unknown_env")
    assert isinstance(exc, UnknownEnvError) and isinstance(exc, local) and isinstance(exc, gym.error.Error)
    assert_unchanged(exc, UnknownEnvError, "boom", f"gymnasium.error.{name}")


def test_every_gymnasium_error_class_is_on_the_allowlist():
    classes = [c for c in vars(gym.error).values() if isinstance(c, type) and issubclass(c, Exception)]
    assert len(classes) > 15
    for cls in classes:
        exc = env_error(exception_type_name(cls))
        assert isinstance(exc, cls) and isinstance(exc, RemoteEnvError), cls


def test_codes_keep_their_class_and_a_base_already_derived_from_is_not_doubled():
    invalid = env_error("ValueError", code="invalid_action")
    assert type(invalid) is InvalidActionError  # already a ValueError
    assert type(env_error("RuntimeError")) is RemoteEnvError
    assert type(env_error("Exception")) is RemoteEnvError
    lost = env_error("TypeError", code="simulator_gone")
    assert isinstance(lost, SimulatorLostError) and isinstance(lost, TypeError)
    auth = env_error("gymnasium.error.ResetNeeded", code="auth_failed")
    assert isinstance(auth, AuthenticationError) and isinstance(auth, gym.error.ResetNeeded)


class EnvSpecificFailure(Exception):
    """An env library's own exception, registered by the integration that knows it."""


class FlowOfControl(StopIteration):
    pass


def test_registered_classes_join_the_allowlist():
    name = exception_type_name(EnvSpecificFailure)
    assert name == f"{__name__}.EnvSpecificFailure"
    assert not isinstance(env_error(name), EnvSpecificFailure)
    assert register_remote_exception(EnvSpecificFailure) is EnvSpecificFailure  # usable as a decorator
    exc = env_error(name)
    assert isinstance(exc, EnvSpecificFailure) and isinstance(exc, RemoteEnvError)
    assert_unchanged(exc, RemoteEnvError, "boom", name)


@pytest.mark.parametrize("cls", [SystemExit, KeyboardInterrupt, GeneratorExit, BaseException, FlowOfControl,
                                 StopIteration, int, "builtins.TypeError", None])
def test_register_refuses_what_cannot_be_rebuilt(cls):
    with pytest.raises(TypeError):
        register_remote_exception(cls)


def test_register_refuses_remoterl_errors():
    with pytest.raises(TypeError):
        register_remote_exception(RemoteEnvError)


# -- hostile records ---------------------------------------------------------------------

HOSTILE_NAMES = [
    "os.system", "builtins.SystemExit", "SystemExit", "KeyboardInterrupt", "GeneratorExit", "BaseException",
    "builtins.TypeError", "typeerror", "TypeError ", " TypeError", "TypeError\x00", "__builtins__", "__import__",
    "eval", "object", "type", "gymnasium.error", "gymnasium.error.__class__", "gymnasium.make",
    "gymnasium.error.Error.__subclasses__", "antigravity.Fly", "subprocess.Popen", "remoterl_ray.protocol.errors.TLSError",
    "remoterl_ray.protocol.errors.RemoteEnvError[TypeError]", "StopIteration", "StopAsyncIteration",
    "ExceptionGroup", "BaseExceptionGroup", "builtins.AttributeError",
    "", "x" * 1_000_000, "TypeError" * 100_000,
]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=lambda n: repr(n[:40]))
def test_hostile_names_stay_plain_errors(name):
    before = set(sys.modules)
    exc = env_error(name)
    assert type(exc) is RemoteEnvError, name[:100]
    assert not isinstance(exc, (SystemExit, KeyboardInterrupt, GeneratorExit, StopIteration))
    assert exc.message == "boom" and (exc.remote_type or "")[:200] == name[:200] and len(exc.remote_type or "") < 300
    assert set(sys.modules) - before <= {"gymnasium.error"}, "nothing is imported by name"


@pytest.mark.parametrize("cls", [AttributeError, FileNotFoundError, TimeoutError, ImportError, NameError, KeyError,
                                 UnicodeDecodeError])
def test_errors_with_optional_fields_are_rebuilt_from_the_message(cls):
    """Their C-level fields (errno, name) stay unset, as for ``cls("message")``."""
    exc = env_error(cls.__name__)
    assert isinstance(exc, cls) and isinstance(exc, RemoteEnvError) and exc.message == "boom"
    assert pickle.loads(pickle.dumps(exc)).message == "boom"


@pytest.mark.parametrize("remote_type", [5, 2.5, True, ["TypeError"], {"TypeError": 1}, b"TypeError",
                                         ("TypeError",), float("nan"), -(2**63)])
def test_remote_types_that_are_not_strings_stay_plain(remote_type):
    exc = env_error(remote_type)
    assert type(exc) is RemoteEnvError
    assert exc.remote_type == str(remote_type)


@pytest.mark.parametrize("record", [
    None, 5, "TypeError", ["env_error", "boom", "TypeError"], {},
    {"code": None, "remote_type": "TypeError"}, {"code": "no_such_code", "remote_type": "TypeError"},
    {"code": ["env_error"], "message": None, "remote_type": "TypeError"},
    {"code": "env_error", "message": {"nested": [1, 2]}, "remote_type": "KeyError"},
    {"code": "env_error", "message": "m" * 100_000, "remote_type": "TypeError"},
])
def test_malformed_records_never_raise(record):
    exc = error_from_wire(record)
    assert isinstance(exc, RemoteRLError)
    str(exc)
    assert len(exc.message) < 3000


def test_local_class_is_only_a_dict_lookup():
    assert local_class("TypeError") is TypeError
    assert local_class("gymnasium.error.NameNotFound") is gym.error.NameNotFound
    for name in ("os.system", "SystemExit", 5, None, ["TypeError"]):
        assert local_class(name) is None


# -- pickling: Ray ships exceptions raised in env runner actors --------------------------


@pytest.mark.parametrize("name,code", [("TypeError", "env_error"), ("gymnasium.error.NameNotFound", "unknown_env"),
                                       ("KeyError", "invalid_action"), ("ValueError", "timeout")])
def test_combined_errors_survive_pickle_and_copy(name, code):
    exc = env_error(name, "it broke", code)
    exc.extra = {"step": 3}
    for copied in (pickle.loads(pickle.dumps(exc)), copy.copy(exc), copy.deepcopy(exc)):
        assert type(copied) is type(exc)
        assert copied.code == exc.code and copied.message == "it broke" and copied.remote_type == name
        assert str(copied) == str(exc) and copied.extra == {"step": 3}


def test_registered_class_survives_pickle():
    register_remote_exception(EnvSpecificFailure)
    exc = env_error(exception_type_name(EnvSpecificFailure))
    copied = pickle.loads(pickle.dumps(exc))
    assert type(copied) is type(exc) and isinstance(copied, EnvSpecificFailure)


def test_combined_errors_survive_rays_serialization():
    """Ray pickles an actor's exception with cloudpickle and re-raises it as a
    ``RayTaskError`` that also derives from the exception's class."""
    from ray import cloudpickle
    from ray.exceptions import RayTaskError

    exc = env_error("TypeError", "from an actor")
    copied = cloudpickle.loads(cloudpickle.dumps(exc))
    assert type(copied) is type(exc)
    dual = RayTaskError("sample", "Traceback ...", copied).as_instanceof_cause()
    assert isinstance(dual, TypeError) and isinstance(dual, RemoteEnvError) and isinstance(dual, RayTaskError)
    assert dual.code is ErrorCode.ENV_ERROR and dual.remote_type == "TypeError"
    again = cloudpickle.loads(cloudpickle.dumps(dual))
    assert isinstance(again, TypeError) and isinstance(again, RemoteEnvError)
    assert type(again.cause) is type(exc)


def test_combined_errors_cross_a_real_ray_actor_boundary(ray_cluster):
    import ray

    @ray.remote(num_cpus=0)
    def fail() -> None:
        raise error_from_wire({"code": "unknown_env", "message": "no such env",
                               "remote_type": "gymnasium.error.NameNotFound"})

    with pytest.raises(gym.error.NameNotFound) as raised:
        ray.get(fail.remote(), timeout=120)
    assert isinstance(raised.value, UnknownEnvError)
    assert type(raised.value.cause) is type(env_error("gymnasium.error.NameNotFound", code="unknown_env"))


# -- the name a callable travels by ----------------------------------------------------


def test_importable_name_is_the_module_attribute_itself():
    assert importable_name(TypeErrorEnv) == "error_envs:TypeErrorEnv"
    assert importable_name(make_counter) == "error_envs:make_counter"
    assert importable_name(len) == "builtins:len"  # a name: the simulator's allowlist refuses it (print: Ray replaces it)

    class Nested(gym.Env):
        pass

    def nested() -> None:
        pass

    impostor = types.FunctionType(make_counter.__code__, {}, "make_counter")
    impostor.__module__, impostor.__qualname__ = "error_envs", "make_counter"
    ghost = types.FunctionType(make_counter.__code__, {}, "make_counter")
    ghost.__module__ = "no_such_module_here"
    script = types.FunctionType(make_counter.__code__, {}, "main_fn")
    script.__module__ = "__main__"
    for obj in (Nested, nested, lambda: None, impostor, ghost, script, StepCounterEnv.step, 5, "x:y",
                types.SimpleNamespace(__module__="error_envs", __qualname__="make_counter")):
        assert importable_name(obj) is None, obj


# -- end to end: a real relay, a real simulator ----------------------------------------


@pytest.fixture(scope="module")
def error_sims(relay, keys):
    pool = SimulatorPool(relay, keys.take())
    pool.start(1, allow=ALLOW)
    yield pool.key
    pool.stop()


@pytest.fixture
def trainer(relay, error_sims):
    assert init_trainer(relay, error_sims, num_workers=1)
    yield
    remoterl_ray.shutdown()


def test_unknown_id_is_unknown_env_and_gymnasiums_name_not_found(trainer):
    with pytest.raises(gym.error.NameNotFound) as raised:
        gym.make("NoSuchEnv-v0")
    exc = raised.value
    assert isinstance(exc, UnknownEnvError) and isinstance(exc, gym.error.UnregisteredEnv)
    assert exc.remote_type == "gymnasium.error.NameNotFound" and "NoSuchEnv" in exc.message
    with pytest.raises(gym.error.VersionNotFound):
        gym.make_vec("CartPole-v9", num_envs=2)  # CartPole exists, v9 does not


def test_an_envs_type_error_arrives_as_a_type_error(trainer):
    try:
        gym.register("ErrorsTypeError-v0", entry_point=TypeErrorEnv)  # a class: mirrored by its name
        env = gym.make("ErrorsTypeError-v0")
        assert isinstance(env, RemoteEnv)
        env.reset(seed=0)
        with pytest.raises(TypeError, match="does not take action 1") as raised:
            env.step(1)
        assert isinstance(raised.value, RemoteEnvError) and raised.value.remote_type == "TypeError"
        assert env.step(0)[0].shape == (1,), "the env keeps working"
        env.close()
        vec = gym.make_vec("ErrorsTypeError-v0", num_envs=2)
        assert isinstance(vec, RemoteVectorEnv)
        vec.reset(seed=0)
        with pytest.raises(TypeError):
            vec.step(np.array([0, 1]))
        vec.close()
    finally:
        gym.registry.pop("ErrorsTypeError-v0", None)


def test_a_registered_function_is_mirrored_and_the_allowlist_decides(trainer, caplog):
    """Allowed: made remotely. Refused: made locally with the warning callables always
    had (libraries register and make envs at import time; RLlib's dreamerv3 does), and
    the warning names the --allow entry that would make it remote."""
    try:
        gym.register("ErrorsCounter-v0", entry_point=make_counter, kwargs={"start": 3})
        gym.register("ErrorsUnlisted-v0", entry_point=make_counter_unlisted)
        gym.register("ErrorsUnlistedString-v0", entry_point="error_envs:make_counter_unlisted")
        env = gym.make("ErrorsCounter-v0")
        assert isinstance(env, RemoteEnv)
        obs, _ = env.reset(seed=0)
        assert obs[0] == 3
        env.close()
        with caplog.at_level("WARNING", logger="remoterl"):
            local = gym.make("ErrorsUnlisted-v0")
        assert not isinstance(local, RemoteEnv) and local.reset(seed=0)[0][0] == 0
        assert "--allow error_envs:make_counter_unlisted" in caplog.text
        assert not isinstance(gym.make_vec("ErrorsUnlisted-v0", 2, vectorization_mode="sync"), RemoteVectorEnv)
        with pytest.raises(RegistrationRefusedError) as refused:  # a string entry point is the user's own choice
            gym.make("ErrorsUnlistedString-v0")
        assert "--allow error_envs:make_counter_unlisted" in str(refused.value)
    finally:
        for env_id in ("ErrorsCounter-v0", "ErrorsUnlisted-v0", "ErrorsUnlistedString-v0"):
            gym.registry.pop(env_id, None)



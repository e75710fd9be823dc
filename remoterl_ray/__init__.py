"""remoterl-ray: remote reinforcement learning on Ray.

Simulators dial out to a relay over WebSocket; trainers call
``remoterl_ray.init(role="trainer")`` and keep their Gymnasium code.
"""

from .api import current_session, init, is_initialized, shutdown
from .protocol.errors import (
    AuthenticationError,
    EnvClosedError,
    EnvsMadeAgainError,
    ErrorCode,
    FrameTooLargeError,
    InvalidActionError,
    NoSimulatorError,
    ProtocolError,
    ProtocolVersionError,
    RegistrationRefusedError,
    RelayUnavailableError,
    RemoteEnvError,
    RemoteRLError,
    RemoteTimeoutError,
    SimulatorLostError,
    TLSError,
    UnknownEnvError,
    UnsupportedError,
    register_remote_exception,
)
from .protocol.spaces import register_space
from .trainer.remote_env import RemoteEnv
from .trainer.remote_vector_env import RemoteVectorEnv

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "EnvClosedError",
    "EnvsMadeAgainError",
    "ErrorCode",
    "FrameTooLargeError",
    "InvalidActionError",
    "NoSimulatorError",
    "ProtocolError",
    "ProtocolVersionError",
    "RegistrationRefusedError",
    "RelayUnavailableError",
    "RemoteEnv",
    "RemoteEnvError",
    "RemoteRLError",
    "RemoteTimeoutError",
    "RemoteVectorEnv",
    "SimulatorLostError",
    "TLSError",
    "UnknownEnvError",
    "UnsupportedError",
    "__version__",
    "current_session",
    "init",
    "is_initialized",
    "register_remote_exception",
    "register_space",
    "shutdown",
]

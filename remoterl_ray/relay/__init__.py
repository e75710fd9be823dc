"""Layer 3: the relay core (ASGI app + switchboard). Does not import Ray."""

from .app import RelayConfig, create_app
from .auth import StaticKeys

__all__ = ["RelayConfig", "StaticKeys", "create_app"]

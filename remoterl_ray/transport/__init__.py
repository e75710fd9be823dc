"""Layer 2: the client connection to the relay."""

from .connection import RelayConnection, Reply, endpoint

__all__ = ["RelayConnection", "Reply", "endpoint"]

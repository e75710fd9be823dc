"""Layer 1: the wire protocol as pure functions and data, no I/O."""

from .errors import ErrorCode, RemoteRLError, error_from_wire
from .frames import HEADER_SIZE, PROTOCOL_VERSION, Header, Kind, Op, pack, unpack_header

__all__ = [
    "ErrorCode",
    "HEADER_SIZE",
    "Header",
    "Kind",
    "Op",
    "PROTOCOL_VERSION",
    "RemoteRLError",
    "error_from_wire",
    "pack",
    "unpack_header",
]

"""Network addresses, as the relay's limits count them and as clients judge them.

An IPv6 client is given a whole /64 by its provider, so counting single
addresses would hand it 2^64 fresh starts: every per-address limit (refused
hellos, admin tokens, connections) counts by /64 instead. Loopback traffic
never leaves the machine: a key sent there in clear is not exposed, and a
loopback client is this machine (unless a proxy runs on it).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


def address_key(host: str | None) -> str:
    """What per-address limits count by: the IPv4 address, or the IPv6 /64."""
    if not host:
        return "?"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def is_loopback(host: str | None) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Networks:
    """A set of addresses and networks (the operator's trusted proxies)."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self._networks = [ipaddress.ip_network(entry, strict=False) for entry in entries]

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __contains__(self, host: object) -> bool:
        try:
            address = ipaddress.ip_address(str(host))
        except ValueError:
            return False
        return any(address in network for network in self._networks)

"""The account API key format: ``rrl_<workspace tag>_<key id>_<secret>``, all hex.

The workspace tag is a random id of the workspace (never its name). Clients
read it to send one affinity header for every key of a workspace, so all of
a workspace's peers meet in one relay replica; the relay reads the key id to
find the one stored record to check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "rrl"
TAG_HEX = 10
ID_HEX = 8
SECRET_HEX = 48
_KEY = re.compile(rf"^{PREFIX}_([0-9a-f]{{{TAG_HEX}}})_([0-9a-f]{{{ID_HEX}}})_([0-9a-f]{{{SECRET_HEX}}})$")


@dataclass(frozen=True)
class ParsedKey:
    tag: str  # the workspace's tag
    key_id: str


def parse_key(api_key: str) -> ParsedKey | None:
    """The parts of an account key, or None if ``api_key`` is not one (truncated, mangled, a static key)."""
    match = _KEY.match(api_key)
    return ParsedKey(match.group(1), match.group(2)) if match else None


def format_key(tag: str, key_id: str, secret: str) -> str:
    return f"{PREFIX}_{tag}_{key_id}_{secret}"

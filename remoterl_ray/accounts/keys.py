"""Issuing account keys and checking them against their stored salted hash.

Only ``salt`` and ``HMAC-SHA256(salt, key)`` are stored. A slow password hash
would add nothing for 192-bit random secrets, and would hand a flood of
guessed keys free CPU time on the relay.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from ..protocol.api_keys import ID_HEX, SECRET_HEX, TAG_HEX, format_key


def new_tag() -> str:
    return secrets.token_hex(TAG_HEX // 2)


def new_key(tag: str) -> tuple[str, str]:
    """A fresh ``(key_id, key)`` for the workspace with ``tag``."""
    key_id = secrets.token_hex(ID_HEX // 2)
    return key_id, format_key(tag, key_id, secrets.token_hex(SECRET_HEX // 2))


def new_salt() -> str:
    return secrets.token_hex(16)


def hash_key(salt: str, api_key: str) -> str:
    return hmac.new(bytes.fromhex(salt), api_key.encode("utf-8"), hashlib.sha256).hexdigest()


def key_matches(salt: str, stored_hash: str, api_key: str) -> bool:
    return hmac.compare_digest(hash_key(salt, api_key), stored_hash)

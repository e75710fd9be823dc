"""Operator authentication for the dashboard and the admin endpoints.

Operators are named in the relay's config, each with a token; only the
token's SHA-256 digest is held. A browser logs in once and gets a signed,
HttpOnly, SameSite=Strict cookie (operator name, expiry, HMAC). The HMAC key
is a random secret kept in the accounts store (never in a config, which may
hold the digests) mixed with the operator's token digest, so any replica can
check a cookie without shared sessions, and changing a token ends its
logins. Scripts send ``Authorization: Bearer TOKEN`` instead.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from ..protocol.affinity import key_digest

COOKIE = "remoterl_admin"
COOKIE_SECONDS = 12 * 3600


def token_digest(token: str) -> str:
    """What the config keeps of a token: ``sha256:<hex>`` stays as is, anything else is hashed."""
    return token[7:].lower() if token.startswith("sha256:") else key_digest(token)


class AdminAuth:
    def __init__(self, digests: dict[str, str], secret: str | None = None) -> None:
        """``digests``: operator name -> SHA-256 hex digest of that operator's token;
        ``secret``: the signing secret (the accounts store's; else one for this process)."""
        self._digests = {name: d.lower() for name, d in digests.items()}
        self.secret = secret or secrets.token_hex(32)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def operator_for_token(self, token: str) -> str | None:
        digest = key_digest(token)
        found = None
        for name, known in self._digests.items():  # compare with every one: no early exit to time
            if hmac.compare_digest(digest, known):
                found = name
        return found

    def _sign(self, operator: str, expires: int) -> str:
        key = hmac.new(bytes.fromhex(self.secret), self._digests[operator].encode(), hashlib.sha256).digest()
        return hmac.new(key, f"{operator}|{expires}".encode(), hashlib.sha256).hexdigest()

    def cookie_for(self, operator: str, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + COOKIE_SECONDS)
        return f"{operator}|{expires}|{self._sign(operator, expires)}"

    def operator_for_cookie(self, value: str, now: float | None = None) -> str | None:
        try:
            operator, expires_text, signature = value.rsplit("|", 2)
            expires = int(expires_text)
        except ValueError:
            return None
        now = time.time() if now is None else now
        if operator not in self._digests or not now <= expires <= now + COOKIE_SECONDS:
            return None
        return operator if hmac.compare_digest(signature, self._sign(operator, expires)) else None

    def operator_for_headers(self, authorization: str | None, cookie: str | None) -> str | None:
        """The operator a request comes from (bearer token or login cookie), or None."""
        if authorization and authorization.lower().startswith("bearer "):
            return self.operator_for_token(authorization[7:].strip())
        if cookie:
            return self.operator_for_cookie(cookie)
        return None

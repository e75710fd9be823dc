"""Refused-hello rate limiting per source address.

A client that keeps offering bad keys is refused at once, without a key
lookup, for ``cooldown`` seconds once it has failed ``max_failures`` times
within ``window`` seconds. Good keys from other addresses never wait.
"""

from __future__ import annotations

import time
from collections import deque


class FailureLimiter:
    def __init__(self, max_failures: int = 20, window: float = 10.0, cooldown: float = 30.0) -> None:
        self.max_failures = max_failures
        self.window = window
        self.cooldown = cooldown
        self._failures: dict[str, deque[float]] = {}
        self._until: dict[str, float] = {}

    def limited(self, source: str, now: float | None = None) -> float:
        """Seconds ``source`` must still wait (0: it may try)."""
        now = time.monotonic() if now is None else now
        until = self._until.get(source, 0.0)
        if until <= now:
            self._until.pop(source, None)
            return 0.0
        return until - now

    def failed(self, source: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        times = self._failures.setdefault(source, deque())
        times.append(now)
        while times and times[0] < now - self.window:
            times.popleft()
        if len(times) >= self.max_failures:
            self._until[source] = now + self.cooldown
            times.clear()
        if len(self._failures) > 100_000:  # bounded memory under a spray of addresses
            self._failures = {s: t for s, t in self._failures.items() if t and t[-1] >= now - self.window}

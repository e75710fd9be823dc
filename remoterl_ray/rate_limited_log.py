"""Log lines about peer misbehaviour without letting a peer flood the log.

A misbehaving or hostile peer can make a process notice the same problem
thousands of times a second. Each kind of line (its ``key``) is written at
most ``burst`` times per ``interval`` seconds; the rest are counted and
reported as one line when the next interval starts. Never a traceback: the
message says what the peer did.
"""

from __future__ import annotations

import logging
import threading
import time

MAX_KEYS = 1024  # kinds of lines tracked at once (keys are chosen by us, but bounded all the same)


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, *, interval: float = 10.0, burst: int = 5) -> None:
        self.logger = logger
        self.interval = interval
        self.burst = burst
        self._windows: dict[str, list[float]] = {}  # key -> [window start, lines written, lines dropped]
        self._lock = threading.Lock()

    def allow(self, key: str) -> tuple[bool, int]:
        """Whether a line of kind ``key`` may be written now, and how many lines of
        that kind were dropped in the interval that just ended (to report once)."""
        now = time.monotonic()
        with self._lock:
            dropped = 0
            window = self._windows.get(key)
            if window is None or now - window[0] >= self.interval:
                if window is not None:
                    dropped = int(window[2])
                elif len(self._windows) >= MAX_KEYS:
                    self._windows.clear()
                window = self._windows[key] = [now, 0, 0]
            if window[1] >= self.burst:
                window[2] += 1
                return False, 0
            window[1] += 1
            return True, dropped

    def log(self, level: int, key: str, message: str, *args: object) -> None:
        """Write ``message % args`` unless ``key`` already used its lines this interval."""
        if not self.logger.isEnabledFor(level):
            return
        allowed, dropped = self.allow(key)
        if dropped:
            self.logger.log(level, "%d more like this in the last %.0f s: %s", dropped, self.interval, key)
        if allowed:
            self.logger.log(level, message, *args)

    def warning(self, key: str, message: str, *args: object) -> None:
        self.log(logging.WARNING, key, message, *args)

    def info(self, key: str, message: str, *args: object) -> None:
        self.log(logging.INFO, key, message, *args)


class RateLimitFilter(logging.Filter):
    """A filter for a library's logger (uvicorn's) whose lines a peer can trigger:
    each message template at most ``burst`` times an interval, and no tracebacks."""

    def __init__(self, limiter: RateLimitedLog) -> None:
        super().__init__()
        self.limiter = limiter

    def filter(self, record: logging.LogRecord) -> bool:
        allowed, dropped = self.limiter.allow(str(record.msg))
        if not allowed:
            return False
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            detail = f"{type(exc).__name__}: {exc}".replace("\n", " ").replace("%", "%%")
            record.msg = f"{str(record.msg).strip()} ({detail})"
            record.exc_info = None
            record.exc_text = None
        if dropped:
            record.msg = f"{record.msg} [{dropped} more like this before]"
        return True

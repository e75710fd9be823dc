"""Exactly-once requests across a resume, without I/O.

A trainer numbers its requests from one counter for the whole process
(:class:`SeqCounter`), so on any one channel, even after it moved to a new
connection, a later request always has a later seq. When a channel resumes,
the trainer sends again, with their old seqs, the requests it has no answer
to. The simulator keeps its last answers per channel (:class:`AnswerMemory`):
a seq it already answered is answered again from memory, not run again; a
seq it never saw is run. Seqs are compared as serial numbers (RFC 1982), so
they may wrap around 2**32.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from typing import Any, NamedTuple

from .errors import ErrorCode, ProtocolError
from .frames import MAX_SEQ
from .limits import ANSWERS_KEPT

_HALF = 2**31


def seq_after(a: int, b: int) -> bool:
    """Serial-number order: ``a`` was sent after ``b`` (both in 1..MAX_SEQ)."""
    return a != b and (a - b) % 2**32 < _HALF


class SeqCounter:
    """Request seqs for every connection of one trainer process: 1, 2, ...,
    MAX_SEQ - 1, then 1 again. Thread-safe."""

    def __init__(self) -> None:
        self._count = itertools.count()
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            return next(self._count) % (MAX_SEQ - 1) + 1


class Answer(NamedTuple):
    op: int
    body: bytes | None
    error: dict[str, Any] | None


class AnswerMemory:
    """One resumable channel's last answers, by seq (its simulator keeps one)."""

    __slots__ = ("answers", "newest")

    def __init__(self) -> None:
        self.answers: OrderedDict[int, Answer] = OrderedDict()
        self.newest: int | None = None  # the latest seq run on this channel

    def recall(self, seq: int) -> Answer | None:
        """The answer already given to ``seq``; None if ``seq`` is new (run it).
        Raises ``ProtocolError`` (``resume_gap``) for a seq answered too long ago
        to be remembered: running it again would step the env twice."""
        answer = self.answers.get(seq)
        if answer is not None:
            return answer
        if self.newest is not None and not seq_after(seq, self.newest):
            raise ProtocolError(
                f"request {seq} was answered before the last {ANSWERS_KEPT} answers this simulator keeps "
                "per channel; it is not run twice",
                code=ErrorCode.RESUME_GAP,
            )
        return None

    def remember(self, seq: int, answer: Answer) -> None:
        self.answers[seq] = answer
        self.newest = seq
        if len(self.answers) > ANSWERS_KEPT:
            self.answers.popitem(last=False)

"""Remote-env metrics as TensorBoard scalars, written with TensorBoard's own
event-file writer (no torch or tensorflow needed on the trainer)."""

from __future__ import annotations

import time

from ..extras import require

require("tensorboard", "tensorboard_dir (remote-env metrics as TensorBoard scalars)")

from tensorboard.compat.proto.event_pb2 import Event  # noqa: E402 - after the check: a missing extra is one line
from tensorboard.compat.proto.summary_pb2 import Summary  # noqa: E402
from tensorboard.summary.writer.event_file_writer import EventFileWriter  # noqa: E402

TAG_PREFIX = "remoterl/"


class ScalarWriter:
    def __init__(self, logdir: str, flush_secs: float = 5.0) -> None:
        self.logdir = logdir
        self._writer = EventFileWriter(logdir, flush_secs=flush_secs, filename_suffix=".remoterl")

    def write(self, step: int, values: dict[str, float]) -> None:
        summary = Summary(value=[Summary.Value(tag=TAG_PREFIX + k, simple_value=v) for k, v in values.items()])
        self._writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()

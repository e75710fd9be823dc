"""Layer 6: what a trainer's session is told: where the relay is, its key, and its bounds.

Kept apart from the session so the links to the relay and the session that
makes envs over them read the same settings without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..protocol.limits import MAX_MESSAGE, MAX_SPACE_BYTES, RESUME_WINDOW


@dataclass(frozen=True)
class TrainerSettings:
    relay_url: str
    api_key: str | None = field(repr=False)  # settings travel in RLlib configs, which get logged
    num_workers: int = 1
    num_env_runners: int = 2
    timeout: float = 60.0  # per request (step, reset, ...)
    make_timeout: float = 120.0  # creating envs may load heavy simulators
    connect_timeout: float = 10.0
    simulator_wait: float = 10.0
    tensorboard_dir: str | None = None  # remote-env metrics as TensorBoard scalars
    metrics_interval: float = 5.0  # seconds between TensorBoard points
    ca_file: str | None = None  # PEM CAs a wss:// relay is verified with (None: the system trust store)
    max_space_bytes: int = MAX_SPACE_BYTES  # largest space a simulator may describe (protocol/limits.py)
    resume_window: float = RESUME_WINDOW  # seconds a channel whose connection dropped waits to resume (0: never resume)
    compression: str = "auto"  # what simulators are asked to compress (protocol/compression.py)
    max_message: int = MAX_MESSAGE  # largest message taken in, its chunks put together

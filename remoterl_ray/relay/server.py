"""Run the relay app embedded, under uvicorn (no Ray needed)."""

from __future__ import annotations

import logging

import uvicorn

from ..protocol.frames import HEADER_SIZE
from .app import RelayConfig, create_app

log = logging.getLogger("remoterl.relay")


def run_relay(
    config: RelayConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    ping_interval: float = 10.0,
    ping_timeout: float = 20.0,
    log_level: str = "warning",
) -> None:
    """Serve until interrupted (uvicorn handles SIGINT/SIGTERM gracefully).

    uvicorn's own frame limit sits well above ours so that an oversized frame
    reaches the app and gets a coded ``frame_too_large`` answer; only frames
    beyond twice the limit are cut off by uvicorn itself (close code 1009).
    """
    app = create_app(config)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        ws="websockets-sansio",
        ws_max_size=2 * config.max_frame + HEADER_SIZE,
        ws_ping_interval=ping_interval,
        ws_ping_timeout=ping_timeout,
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=3,
    )

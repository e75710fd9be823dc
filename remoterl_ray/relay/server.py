"""Run the relay app embedded, under uvicorn (no Ray needed).

The server's own protocol classes (``guarded_server.py``) bound every
connection before the app sees it, and run the TLS handshake themselves once
a connection is counted; client addresses come from the socket, or from
``X-Forwarded-For`` only when the operator names trusted proxies.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence

import uvicorn

from ..addresses import Networks
from ..protocol.frames import HEADER_SIZE
from ..rate_limited_log import RateLimitedLog, RateLimitFilter
from .app import RelayConfig, create_app
from .guarded_server import protocol_classes, raise_fd_limit, server_tls_context
from .server_limits import ServerLimits

log = logging.getLogger("remoterl.relay")


def run_relay(
    config: RelayConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    ping_interval: float = 10.0,
    ping_timeout: float = 20.0,
    log_level: str = "warning",
    tls_cert: str | None = None,
    tls_key: str | None = None,
    limits: ServerLimits | None = None,
    trusted_proxies: Sequence[str] = (),
    on_listening: Callable[[int], None] | None = None,
) -> None:
    """Serve until interrupted (uvicorn handles SIGINT/SIGTERM gracefully).

    The socket is bound first: an address in use raises ``OSError`` before
    anything is announced, and ``on_listening(port)`` (the port bound, which
    ``port=0`` leaves to the system) says where the relay is only once it is.

    With ``tls_cert`` and ``tls_key`` (PEM files) it serves ``wss://`` and
    ``https://`` only, so keys never cross the network in clear.

    uvicorn's own frame limit sits well above ours so that an oversized frame
    reaches the app and gets a coded ``frame_too_large`` answer; only frames
    beyond twice the limit are cut off by uvicorn itself (close code 1009).
    """
    limits = raise_fd_limit(limits or ServerLimits.for_frame(config.max_frame))
    tls = server_tls_context(tls_cert, tls_key) if tls_cert and tls_key else None
    http, ws = protocol_classes(limits, trusted_proxies=Networks(trusted_proxies), tls=tls)
    server_config = uvicorn.Config(
        create_app(config),
        host=host,
        port=port,
        log_level=log_level,
        http=http,
        ws=ws,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        ws_max_size=2 * config.max_frame + HEADER_SIZE,
        ws_ping_interval=ping_interval,
        ws_ping_timeout=ping_timeout,
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=3,
        proxy_headers=bool(trusted_proxies),
        forwarded_allow_ips=list(trusted_proxies) or None,
        server_header=False,
    )
    quiet = RateLimitFilter(RateLimitedLog(logging.getLogger("uvicorn.error")))
    for name in ("uvicorn.error", "asyncio"):  # lines a peer can trigger: rate-limited, no tracebacks
        logging.getLogger(name).addFilter(quiet)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family)
    try:
        if on_listening is not None:
            on_listening(sock.getsockname()[1])
        uvicorn.Server(server_config).run(sockets=[sock])
    finally:
        sock.close()

"""Client-side TLS: the one place that decides how a client trusts the relay.

Every client connection (the WebSocket and the discovery HTTP calls) gets its
``ssl.SSLContext`` from :func:`client_context`: certificates are always
verified, against the system trust store or, when a CA file is given, against
that file only. Nothing here builds an unverified context, and nothing moves
a ``wss://`` URL to ``ws://``: a failure is a final :class:`TLSError` that
says how to fix it.

A key sent over ``ws://`` to a host that is not this machine crosses the
network in clear; :func:`warn_if_cleartext` says so once per host.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
from functools import lru_cache
from urllib.parse import urlsplit

from ..addresses import is_loopback
from ..protocol.errors import TLSError

log = logging.getLogger("remoterl.transport")

TRUST_HINT = (
    "if the relay's certificate comes from a private CA, trust that CA with --ca-file FILE (simulator), "
    "REMOTERL_CA_FILE=FILE or init(..., ca_file=FILE)"
)
_NAME_MISMATCH = (62, 64)  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
# What OpenSSL (3.0 and later versions) reports when the peer answered a TLS hello with plain bytes.
_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE"})

_warned_hosts: set[str] = set()
_warned_lock = threading.Lock()


def client_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A verifying client context: the system trust store, or only ``ca_file``'s CAs.

    Cached per file and modification time, so a replaced CA file is read again
    on the next connection. Raises :class:`TLSError` for a missing or unusable file.
    """
    if ca_file is None:
        return _context(None, 0)
    try:
        stamp = os.stat(ca_file).st_mtime_ns
    except OSError as exc:
        raise TLSError(f"cannot read the CA file {ca_file}: {exc.strerror or exc}") from None
    return _context(ca_file, stamp)


@lru_cache(maxsize=16)
def _context(ca_file: str | None, _stamp: int) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise TLSError(f"cannot load CA certificates from {ca_file}: {exc} (expected PEM certificates)") from None


def trust_source(ca_file: str | None) -> str:
    return f"the CA file {ca_file}" if ca_file else "the system trust store"


def verification_error(url: str, exc: ssl.SSLCertVerificationError, ca_file: str | None) -> TLSError:
    """The final error for a certificate the client does not accept."""
    reason = exc.verify_message or exc.reason or str(exc)
    if exc.verify_code in _NAME_MISMATCH:
        fix = "dial the relay by a host name or address its certificate names"
    else:
        fix = TRUST_HINT
    return TLSError(
        f"refusing the relay at {url}: its TLS certificate failed verification against "
        f"{trust_source(ca_file)} ({reason}); {fix}"
    )


def handshake_error(url: str, exc: ssl.SSLError) -> TLSError | None:
    """The final error for a TLS handshake that cannot succeed by retrying, else None.

    A peer that answers a TLS hello with plain bytes is no TLS server; the
    client does not try ``ws://`` instead (its key would travel in clear).
    """
    if exc.reason in _NOT_TLS:
        return TLSError(
            f"the relay at {url} does not speak TLS: start it with --tls-cert/--tls-key or put a TLS proxy "
            "in front (a wss:// URL is never retried as ws://)"
        )
    return None


def speaks_tls(host: str, port: int, timeout: float) -> bool:
    """Whether ``host:port`` completes (or fails only on verifying) a TLS handshake.

    It sends no data, so nothing (least of all a key) travels on this probe."""
    context = client_context(None)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            with context.wrap_socket(sock, server_hostname=host):
                return True
    except ssl.SSLCertVerificationError:
        return True
    except (OSError, ValueError):
        return False


def expects_tls(url: str, timeout: float) -> TLSError | None:
    """For a ``ws://`` URL whose server gave no HTTP answer: the final error saying
    it wants ``wss://``, if it speaks TLS; else None (it is just unreachable)."""
    parts = urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname or not speaks_tls(parts.hostname, parts.port or 80, timeout):
        return None
    secure = parts._replace(scheme="wss").geturl()
    return TLSError(
        f"the relay at {url} expects TLS: dial {secure} instead (and trust its CA if it is private: "
        "--ca-file, REMOTERL_CA_FILE or init(..., ca_file=...))"
    )


def tls_failure(url: str, exc: BaseException, ca_file: str | None) -> TLSError | None:
    """The final error ``exc`` amounts to, if it is a TLS failure that retrying cannot fix."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return verification_error(url, exc, ca_file)
    if isinstance(exc, ssl.SSLError):
        return handshake_error(url, exc)
    return None


def warn_if_cleartext(url: str, api_key: str | None) -> None:
    """Warn once per host when ``api_key`` is about to cross a network over ``ws://``.

    Logged at WARNING on ``remoterl.transport``: with no logging configured,
    Python's last-resort handler still prints it to stderr."""
    parts = urlsplit(url)
    if parts.scheme != "ws" or not api_key or is_loopback(parts.hostname):
        return
    host = parts.hostname or parts.netloc
    with _warned_lock:
        if host in _warned_hosts:
            return
        _warned_hosts.add(host)
    log.warning(
        "remoterl: the API key is sent to %s over ws://, in clear text: anyone on the network path can read "
        "it and use it. Use wss:// (remoterl relay --tls-cert FILE --tls-key FILE, or a TLS proxy in front "
        "of the relay).",
        host,
    )

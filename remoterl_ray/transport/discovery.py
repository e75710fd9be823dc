"""Which relay region to dial: the discovery endpoint and round-trip timing.

A relay publishes its regions at ``GET /v1/regions`` (a region's ``url`` is
null when it is the relay being asked). A simulator times ``GET /healthz`` on
each region over one kept-alive HTTP connection and dials the fastest, so
it lands in the region nearest to it; ``--region`` names one instead.

``GET /v1/route`` (sent with the affinity header, so the ingress routes it
like the WebSocket that follows) names the relay replica's own address when
it has one a client may dial directly (Serve behind HAProxy): one proxy hop
less each way on every frame.

For a ``wss://`` relay these calls use HTTPS with the same verifying context
as the WebSocket (:mod:`.tls`); an untrusted certificate is a final
``TLSError``, never a reason to try another URL.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..protocol.affinity import SESSION_HEADER, session_id_for
from .tls import client_context, expects_tls, tls_failure

log = logging.getLogger("remoterl.transport")


class UnknownRegionError(ValueError):
    """The relay answered, and it has no region of the requested name."""


class RegionsUnavailableError(OSError):
    """The relay's region list could not be fetched (it is down, or answered garbage)."""


def keeps_security(original: str, candidate: str) -> bool:
    """A URL we may move to from ``original``: never from ``wss://`` to ``ws://``
    (the hello carries the API key)."""
    scheme = urlsplit(candidate).scheme
    return scheme in ("ws", "wss") and not (urlsplit(original).scheme == "wss" and scheme != "wss")


@dataclass(frozen=True)
class RegionEndpoint:
    name: str
    url: str  # ws:// or wss:// URL of the region's relay
    rtt: float | None = None  # seconds, when measured


def split_relay_url(url: str) -> tuple[str, str, str, str]:
    """``ws[s]://host:port/prefix[/ws][?query]`` -> (scheme, host:port, /prefix, query)."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"relay URL must start with ws:// or wss://, got {url!r}")
    path = parts.path.rstrip("/")
    if path.endswith("/ws"):
        path = path[: -len("/ws")]
    return parts.scheme, parts.netloc, path, parts.query


def _connection(ws_url: str, timeout: float, ca_file: str | None = None) -> tuple[http.client.HTTPConnection, str]:
    """HTTP for ``ws://``, verified HTTPS for ``wss://``."""
    scheme, netloc, prefix, _ = split_relay_url(ws_url)
    if scheme == "wss":
        return http.client.HTTPSConnection(netloc, timeout=timeout, context=client_context(ca_file)), prefix
    return http.client.HTTPConnection(netloc, timeout=timeout), prefix


def _raise_if_tls(url: str, exc: BaseException, ca_file: str | None, timeout: float) -> None:
    """A TLS failure is final: raised, never taken for "no answer" (which would try another URL)."""
    failure = tls_failure(url, exc, ca_file)
    if failure is None and isinstance(exc, http.client.RemoteDisconnected):  # a TLS port asked in plain HTTP?
        failure = expects_tls(url, timeout)
    if failure is not None:
        raise failure from None


def direct_route(
    relay_url: str, api_key: str | None, timeout: float = 5.0, *, ca_file: str | None = None
) -> str | None:
    """The ``ws(s)://`` address of the replica that serves ``api_key``'s workspace, if offered."""
    try:
        conn, prefix = _connection(relay_url, timeout, ca_file)
        try:
            conn.request("GET", f"{prefix}/v1/route", headers={SESSION_HEADER: session_id_for(api_key)})
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status != 200:
            return None
        direct = json.loads(body).get("direct_url")
    except (OSError, http.client.HTTPException, ValueError, AttributeError) as exc:
        _raise_if_tls(relay_url, exc, ca_file, timeout)
        log.debug("no direct route from %s: %s", relay_url, exc)
        return None
    return direct if isinstance(direct, str) and keeps_security(relay_url, direct) else None


def fetch_regions(relay_url: str, timeout: float = 5.0, *, ca_file: str | None = None) -> list[RegionEndpoint]:
    """The regions ``relay_url`` publishes. Raises ``RegionsUnavailableError`` if it cannot be asked,
    ``TLSError`` if its certificate is not trusted.

    Regions whose URL would downgrade ``wss://`` to ``ws://`` are left out.
    """
    try:
        conn, prefix = _connection(relay_url, timeout, ca_file)
        try:
            conn.request("GET", f"{prefix}/v1/regions")
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise RegionsUnavailableError(f"GET {prefix}/v1/regions answered HTTP {response.status}")
        data = json.loads(body)
        here = data.get("region")
        # The region that answered is reached by the URL we already used (its
        # published URL may name an address this machine cannot reach).
        listed = [
            (str(r["name"]), relay_url if r["name"] == here else r.get("url") or relay_url) for r in data["regions"]
        ]
    except RegionsUnavailableError:
        raise
    except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError) as exc:
        _raise_if_tls(relay_url, exc, ca_file, timeout)
        raise RegionsUnavailableError(f"no region list from {relay_url}: {exc}") from None
    out = []
    for name, url in listed:
        if isinstance(url, str) and keeps_security(relay_url, url):
            out.append(RegionEndpoint(name, url))
        else:
            log.warning("ignoring region %s: its URL %r is not a safe ws(s):// URL from %s", name, url, relay_url)
    return out


def measure_rtt(ws_url: str, tries: int = 3, timeout: float = 3.0, *, ca_file: str | None = None) -> float | None:
    """Best of ``tries`` ``GET /healthz`` round trips after one warm-up; None if
    unreachable, or if its certificate is not trusted (logged: that region is skipped)."""
    try:
        conn, prefix = _connection(ws_url, timeout, ca_file)
    except ValueError:
        return None
    best = None
    try:
        for attempt in range(tries + 1):
            started = time.perf_counter()
            conn.request("GET", f"{prefix}/healthz")
            response = conn.getresponse()
            response.read()
            elapsed = time.perf_counter() - started
            if response.status != 200:
                return None
            if attempt > 0:  # the first one also paid for connecting
                best = elapsed if best is None else min(best, elapsed)
    except (OSError, http.client.HTTPException) as exc:
        failure = tls_failure(ws_url, exc, ca_file)
        if failure is not None:
            log.warning("skipping region %s: %s", ws_url, failure.message)
            return None
        log.debug("cannot time %s: %s", ws_url, exc)
        return None
    finally:
        conn.close()
    return best


def choose_region(
    relay_url: str, region: str | None = None, *, timeout: float = 5.0, ca_file: str | None = None
) -> RegionEndpoint:
    """The region to dial: ``region`` if named, else the one with the lowest RTT.

    Without a region list (the relay is down or predates regions) the relay is
    dialled as given, unless ``region`` is named: then ``RegionsUnavailableError``.
    A named region the relay does not publish is an ``UnknownRegionError``;
    a certificate ``relay_url`` cannot be verified with is a ``TLSError``.
    """
    try:
        regions = fetch_regions(relay_url, timeout, ca_file=ca_file)
    except RegionsUnavailableError as exc:
        if region is not None:
            raise
        log.debug("%s; dialling %s as given", exc, relay_url)
        return RegionEndpoint("", relay_url)
    if region is not None:
        for candidate in regions:
            if candidate.name == region:
                return candidate
        known = ", ".join(r.name for r in regions) or "none"
        raise UnknownRegionError(f"relay {relay_url} has no region {region!r} (regions: {known})")
    if len(regions) == 1:
        return regions[0]
    with ThreadPoolExecutor(max_workers=min(8, len(regions))) as pool:
        timed = [
            RegionEndpoint(r.name, r.url, rtt)
            for r, rtt in zip(regions, pool.map(lambda r: measure_rtt(r.url, ca_file=ca_file), regions))
        ]
    reachable = [r for r in timed if r.rtt is not None]
    if not reachable:
        return RegionEndpoint("", relay_url)
    best = min(reachable, key=lambda r: r.rtt)  # type: ignore[arg-type, return-value]
    log.info(
        "region round trips: %s; nearest is %s",
        ", ".join(f"{r.name} {r.rtt * 1000:.1f} ms" if r.rtt is not None else f"{r.name} unreachable" for r in timed),
        best.name,
    )
    return best

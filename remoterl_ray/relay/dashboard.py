"""The operator dashboard (``/dashboard``) and the admin endpoints.

The page is one static HTML file; it logs in with an admin token, then an
``EventSource`` on ``/dashboard/events`` gets a snapshot every second
(``overview.py``): peers per region and replica, each workspace's plan, usage,
block state and steps/s over the last minutes, the slowest simulators' step
latency, the busiest peers (``?focus=WORKSPACE``: that workspace's) and the
audit log. The page draws its charts itself (SVG, no CDN). Only counters, round
trips and names: the relay never holds a payload to show.

Actions (``POST /dashboard/api/actions``) go through the accounts backend, so
under Ray Serve a disconnect reaches whichever replica holds the peer, and
every action is recorded with its time and operator.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from starlette.requests import HTTPConnection
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from ..accounts.store import AccountsError
from ..addresses import address_key, is_loopback
from ..protocol.errors import ErrorCode
from .accounting import Accounting
from .admin import COOKIE, COOKIE_SECONDS, AdminAuth
from .http_errors import error_response
from .overview import Trends, overview
from .ratelimit import FailureLimiter
from .switchboard import Switchboard

EVENT_SECONDS = 1.0


class Login(BaseModel):
    token: str = Field(max_length=512)


class Action(BaseModel):
    action: str = Field(pattern="^(disconnect|block|unblock)$")
    target: str = Field(min_length=1, max_length=200)


def _inline_hash(page: str, tag: str) -> str:
    """The CSP source for the one inline ``<tag>`` block of ``page``: only that exact code may run."""
    body = page.split(f"<{tag}>", 1)[1].split(f"</{tag}>", 1)[0]
    return "'sha256-" + base64.b64encode(hashlib.sha256(body.encode("utf-8")).digest()).decode("ascii") + "'"


def page_policy(page: str) -> str:
    """No other script, style, frame or form target than the page's own."""
    return (
        f"default-src 'none'; script-src {_inline_hash(page, 'script')}; style-src {_inline_hash(page, 'style')}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


def cross_site(request: Request) -> bool:
    """A browser request sent by another site's page (CSRF), by its Origin or Sec-Fetch-Site header."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        return True
    origin = request.headers.get("origin")
    return bool(origin) and origin.split("://", 1)[-1] != request.headers.get("host")


def _error(status: int, code: ErrorCode, message: str) -> JSONResponse:
    return error_response(status, message, code=code)


def source_of(connection: HTTPConnection) -> str:
    """The client's address as per-address limits count it (an IPv6 /64 is one)."""
    return address_key(connection.client.host if connection.client else None)


class AdminRefused(Exception):
    def __init__(self, status: int, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class AdminGate:
    """Who may see and act: operators by token or login cookie; wrong tokens are rate-limited."""

    def __init__(self, admin: AdminAuth, limiter: FailureLimiter, *, local_stats: bool = False) -> None:
        """``local_stats``: with no admin token, the stats endpoints answer loopback
        clients. Off by default: a proxy on the relay's host makes anyone a loopback client."""
        self.admin = admin
        self.limiter = limiter
        self.local_stats = local_stats

    def operator(self, request: Request, *, loopback_without_tokens: bool = False) -> str:
        """The operator behind ``request``, else HTTP 401 (429 while rate-limited).

        With no admin token configured, only ``loopback_without_tokens`` endpoints
        answer, only to this machine, and only if the relay was told to (``local_stats``)."""
        source = source_of(request)
        if not self.admin:
            local = is_loopback(request.client.host if request.client else None)
            if loopback_without_tokens and self.local_stats and local:
                return "local"
            raise HTTPException(
                404 if not loopback_without_tokens else 401,
                "this relay has no admin token configured (give it one; --local-stats answers this machine without)",
            )
        authorization, cookie = request.headers.get("authorization"), request.cookies.get(COOKIE)
        try:
            return self.check(
                source,
                lambda: self.admin.operator_for_headers(authorization, cookie),
                offered=bool(authorization or cookie),
                missing="admin token required (log in, or send Authorization: Bearer TOKEN)",
            )
        except AdminRefused as refused:
            raise HTTPException(refused.status, refused.message) from None

    def check(self, source: str, find: Callable[[], str | None], *, offered: bool, missing: str) -> str:
        """The operator ``find`` names; a wrong token offered counts towards ``source``'s limit."""
        wait = self.limiter.limited(source)
        if wait:
            raise AdminRefused(429, ErrorCode.RATE_LIMITED, f"too many wrong admin tokens; try again in {wait:.0f} s")
        who = find()
        if who is None:
            if offered:
                self.limiter.failed(source)
            raise AdminRefused(401, ErrorCode.AUTH_FAILED, missing)
        return who


def dashboard_router(
    board: Switchboard, accounting: Accounting, gate: AdminGate, cluster: Callable[[], Awaitable[dict[str, Any]]]
) -> APIRouter:
    router = APIRouter()
    page = resources.files(__package__).joinpath("dashboard.html").read_text(encoding="utf-8")
    policy = page_policy(page)
    admin, operator = gate.admin, gate.operator
    trends = Trends()  # one history for every operator watching

    async def snapshot(focus: str | None) -> dict[str, Any]:
        state = accounting.state
        accounts: dict[str, dict[str, Any]] = {}
        for name, plan in state.plans.items():
            accounts[name] = {
                "plan": plan,
                "used_bytes": state.used_bytes.get(name, 0),
                "included_bytes": accounting.prices.included_bytes(plan),
                "blocked": name in state.blocked,
            }
        audit = await accounting.backend.audit_log(20) if accounting.backend is not None else []
        return {**overview(await cluster(), accounts, trends, time.time(), focus), "audit": audit}

    @router.get("/dashboard", response_class=HTMLResponse)
    async def dashboard_page() -> HTMLResponse:
        if not admin:
            return HTMLResponse("<p>This relay has no admin token configured: the dashboard is off.</p>", 404)
        return HTMLResponse(page, headers={"Content-Security-Policy": policy, "Cache-Control": "no-store"})

    @router.post("/dashboard/login")
    async def login(request: Request, body: Login) -> Response:
        if not admin:
            return _error(404, ErrorCode.UNSUPPORTED, "this relay has no admin token configured")
        if cross_site(request):
            return _error(403, ErrorCode.AUTH_FAILED, "cross-site request refused")
        try:
            who = gate.check(
                source_of(request),
                lambda: admin.operator_for_token(body.token),
                offered=True,
                missing="wrong admin token",
            )
        except AdminRefused as refused:
            return _error(refused.status, refused.code, refused.message)
        response = JSONResponse({"operator": who})
        response.set_cookie(
            COOKIE,
            admin.cookie_for(who),
            max_age=COOKIE_SECONDS,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    @router.post("/dashboard/logout")
    async def logout(request: Request) -> Response:
        if cross_site(request):
            return _error(403, ErrorCode.AUTH_FAILED, "cross-site request refused")
        response = JSONResponse({"ok": True})
        response.delete_cookie(COOKIE, path="/")
        return response

    @router.get("/dashboard/api/snapshot")
    async def snapshot_once(request: Request, focus: str | None = Query(None, max_length=200)) -> dict[str, Any]:
        operator(request)
        return await snapshot(focus)

    @router.get("/dashboard/events")
    async def events(request: Request, focus: str | None = Query(None, max_length=200)) -> StreamingResponse:
        who = operator(request)

        async def stream() -> AsyncIterator[str]:
            yield f"event: hello\ndata: {json.dumps({'operator': who})}\n\n"
            while not await request.is_disconnected():
                yield f"data: {json.dumps(await snapshot(focus), separators=(',', ':'), ensure_ascii=False)}\n\n"
                await asyncio.sleep(EVENT_SECONDS)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    @router.post("/dashboard/api/actions")
    async def act(request: Request, body: Action) -> Response:
        who = operator(request)
        if cross_site(request):
            return _error(403, ErrorCode.AUTH_FAILED, "cross-site request refused")
        if accounting.backend is None:
            return _error(409, ErrorCode.UNSUPPORTED, "this relay keeps no accounts store")
        try:
            await accounting.backend.act(who, body.action, body.target)
        except AccountsError as exc:
            return _error(404, ErrorCode.BAD_PAYLOAD, str(exc))
        await accounting.refresh()  # a block holds for the very next hello here; other replicas follow within a sync
        if body.action == "disconnect":  # here now; other replicas on their next sync
            peer = board.find(body.target)
            if peer is not None:
                await accounting.disconnect(peer)
        return JSONResponse({"ok": True, "operator": who, "action": body.action, "target": body.target})

    return router

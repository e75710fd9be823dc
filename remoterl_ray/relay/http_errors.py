"""One error shape for every HTTP answer of the relay: ``{"error": {"code", "message"}}``.

FastAPI answers its own exceptions as ``{"detail": ...}``; the relay's other
endpoints (login, actions, route) answer coded errors. Clients and scripts
handle one shape, with a code from the protocol's table where one fits, and
a request body that does not validate is described by field, never echoed.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..protocol.errors import ErrorCode

_CODES = {
    400: ErrorCode.BAD_PAYLOAD,
    401: ErrorCode.AUTH_FAILED,
    403: ErrorCode.AUTH_FAILED,
    404: ErrorCode.UNSUPPORTED,
    405: ErrorCode.UNSUPPORTED,
    413: ErrorCode.BAD_PAYLOAD,
    422: ErrorCode.BAD_PAYLOAD,
    429: ErrorCode.RATE_LIMITED,
}


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None, *, code: ErrorCode | None = None
) -> JSONResponse:
    """The relay's error answer; ``code`` defaults to the one that fits ``status``."""
    code = code or _CODES.get(status, ErrorCode.BAD_PAYLOAD if status < 500 else ErrorCode.RELAY_GONE)
    return JSONResponse({"error": {"code": code.value, "message": message}}, status_code=status, headers=headers)


def add_error_handlers(app: FastAPI) -> None:
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg', 'invalid')}"
            for e in exc.errors()[:5]
        )
        return error_response(422, f"malformed request body: {fields}"[:500])

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_body)

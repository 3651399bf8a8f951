"""The one place errors become docs/api.md's error JSON. A 500 carries only a code and request id."""

from __future__ import annotations

import logging
import math

from quart import Quart, Response, current_app, g, jsonify
from werkzeug.exceptions import HTTPException

from config import declared
from core.errors import AppError

log = logging.getLogger(__name__)
MAX_RETRY_AFTER = 86_400.0

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
               400: "invalid_parameter"}


def error_response(exc: AppError) -> Response:
    response = jsonify(exc.to_dict())
    response.status_code = exc.status
    if exc.status in (429, 503):
        set_retry_after(response, exc.retry_after)
    return response


def set_retry_after(response: Response, seconds: float | None) -> None:
    """``Retry-After`` in whole seconds, at least 1; an absurd (inf/nan) value from upstream is
    capped at a day. docs/api.md: every 503 carries one, so an error that names no delay (an
    exchange unreachable before its breaker opens, a framework 503) gets
    ``DEPENDENCY_RETRY_AFTER``, the pause after which a failed dependency is tried again."""
    if seconds is None:
        seconds = float(current_app.config.get("DEPENDENCY_RETRY_AFTER", declared("DEPENDENCY_RETRY_AFTER").default))
    if not math.isfinite(seconds):
        seconds = MAX_RETRY_AFTER
    response.headers["Retry-After"] = str(max(1, math.ceil(min(seconds, MAX_RETRY_AFTER))))


def _message(app: Quart, exc: HTTPException, status: int) -> str:
    """Our own words for the HTTP errors the framework raises (its HTML-flavoured descriptions
    otherwise)."""
    if status == 405:
        allowed = sorted(getattr(exc, "valid_methods", None) or [])
        return f"method not allowed here; allowed: {', '.join(allowed)}" if allowed else "method not allowed"
    if status == 413:
        return f"request body larger than {app.config['MAX_CONTENT_LENGTH']} bytes (MAX_BODY_BYTES)"
    if status == 404:
        return "no such endpoint"
    return exc.description or exc.name


def init_error_handlers(app: Quart) -> None:
    @app.errorhandler(AppError)
    async def _app_error(exc: AppError) -> Response:
        if exc.status >= 500:
            log.warning("%s: %s", exc.code, exc.message)
        return error_response(exc)

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = _HTTP_CODES.get(status, "internal_error" if status >= 500 else "invalid_parameter")
        response = jsonify({"error": {"code": code, "message": _message(app, exc, status)}})
        response.status_code = status
        allowed = getattr(exc, "valid_methods", None)
        if status == 405 and allowed:
            response.headers["Allow"] = ", ".join(sorted(allowed))
        if status in (429, 503):
            given = getattr(exc, "retry_after", None)  # werkzeug's 429/503 take one (int seconds)
            set_retry_after(response, float(given) if isinstance(given, int | float) else None)
        return response

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        rid = getattr(g, "request_id", "-")
        log.error("unhandled error (request %s)", rid, exc_info=exc)
        response = jsonify({"error": {
            "code": "internal_error",
            "message": f"internal error; request id {rid}",
            "details": {"request_id": rid},
        }})
        response.status_code = 500
        return response

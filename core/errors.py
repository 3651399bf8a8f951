"""One error hierarchy for the whole service.

Every error the service raises on purpose is an ``AppError``: it carries the HTTP status and the
docs/api.md error code it maps to, so blueprints and the WebSocket handler translate it in one place
(``app_extensions/errors.py``). Docstrings say what a caller should do with each class.
Provider libraries' errors (CCXT, aiohttp, asyncpg, redis) are translated into these at the
boundary with ``raise ... from exc``.
"""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    """Base class: an error with an API status and code. Callers map it to the API's error JSON."""

    status: int = 500
    code: str = "internal_error"
    #: True when retrying the same call later may succeed (network, rate limit, outage).
    temporary: bool = False
    #: False when ``details`` are for logs only (internal addresses, driver messages).
    expose_details: bool = True

    def __init__(
        self,
        message: str = "",
        *,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.details = details
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details and self.expose_details:
            body["details"] = self.details
        return {"error": body}


# --- API errors: the client asked for something wrong. Do not retry; fix the request. ---------
class APIError(AppError):
    """An error answered to the client as is (status and code given per instance)."""

    def __init__(self, status: int, code: str, message: str = "", **kwargs: Any) -> None:
        self.status = status
        self.code = code
        super().__init__(message, **kwargs)


class InvalidParameter(AppError):
    """A parameter or body failed its schema; ``details`` maps field to messages."""

    status, code = 400, "invalid_parameter"


class InvalidJSON(AppError):
    """The body is not JSON."""

    status, code = 400, "invalid_json"


class Unauthorized(AppError):
    """Auth is on and the API key is missing or wrong."""

    status, code = 401, "unauthorized"


class Forbidden(AppError):
    """The endpoint needs a user (an API key) and auth is off. Do not retry."""

    status, code = 403, "forbidden"


class UnknownMarket(AppError):
    status, code = 404, "unknown_market"


class UnknownProvider(AppError):
    status, code = 404, "unknown_provider"


class UnknownSymbol(AppError):
    """The provider does not list this symbol. Do not retry."""

    status, code = 404, "unknown_symbol"


class NotFound(AppError):
    status, code = 404, "not_found"


class RangeNotStored(AppError):
    """``/export`` of a range whose 1m series has minutes neither stored nor verified empty;
    ``details``: ``missing_minutes`` and the first ``missing`` ranges. Backfill them (or ask with
    ``backfill=true``), then ask again."""

    status, code = 409, "range_not_stored"

    def __init__(self, message: str = "", *, missing: list[tuple[int, int]] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        #: Every missing range (``details`` lists only the first ones).
        self.missing = missing or []


class RateLimited(AppError):
    """Our own rate limit rejected the client; ``retry_after`` says when to come back."""

    status, code = 429, "rate_limited"

    @classmethod
    def exceeded(cls, requests: int, seconds: float, route_class: str,
                 retry_after: float | None = None) -> RateLimited:
        """The refusal of a ``requests`` per ``seconds`` limit of ``route_class``, its message
        naming the window: ``rate limit of 300 requests per 60 s (ohlcv) exceeded; ...``."""
        return cls(f"rate limit of {requests} requests per {seconds:g} s ({route_class}) exceeded; "
                   "retry after the seconds in Retry-After", retry_after=retry_after)


# --- Plugin errors: the upstream exchange failed. ---------------------------------------------
class PluginError(AppError):
    """The exchange answered with an error we cannot fix by retrying. Surface it as 502."""

    status, code = 502, "provider_error"


class AuthenticationPluginError(PluginError):
    """Credentials were refused (401/403, CCXT AuthenticationError/PermissionDenied).
    Do not retry: the configuration must change."""


class PluginFeatureNotSupportedError(PluginError):
    """The provider cannot do this (CCXT NotSupported, a timeframe it lacks). Do not retry."""

    status, code = 400, "invalid_parameter"


class NetworkPluginError(PluginError):
    """The exchange is unreachable, timed out, in maintenance or returned 5xx. Temporary:
    retry with backoff; when retries are exhausted, serve stored data or answer 503."""

    status, code = 503, "provider_unavailable"
    temporary = True


class RateLimitedPluginError(NetworkPluginError):
    """The exchange rate-limited or banned us (429/418, DDoSProtection). Temporary: wait at least
    ``retry_after`` seconds when given, then retry."""


class MalformedResponseError(NetworkPluginError):
    """The exchange answered 200 with a body that is not what its API documents. Temporary:
    gateways and exchanges under load do this; retry, do not read it as "no data"."""


# --- Our own dependencies. -------------------------------------------------------------------
class DataSourceError(AppError):
    """A storage dependency (PostgreSQL, Redis) failed. Callers skip that source and degrade."""

    status, code = 503, "dependency_unavailable"
    temporary = True
    expose_details = False  # driver errors name internal hosts: logged, never answered

"""Translation of CCXT errors into ``core.errors`` at the plugin boundary.

The table is ordered most specific first; the first ``isinstance`` match wins (CCXT's hierarchy:
``RateLimitExceeded`` and ``DDoSProtection`` are ``NetworkError``s, ``BadSymbol`` is an
``ExchangeError``). Callers ``raise translate(exc, provider) from exc``.

| CCXT | ours | temporary |
| --- | --- | --- |
| DDoSProtection, RateLimitExceeded | RateLimitedPluginError (with ``retry_after``) | yes |
| OnMaintenance, ExchangeNotAvailable, RequestTimeout, NetworkError | NetworkPluginError | yes |
| BadResponse, NullResponse | MalformedResponseError | yes |
| AuthenticationError, PermissionDenied, AccountSuspended | AuthenticationPluginError | no |
| BadSymbol | UnknownSymbol | no |
| NotSupported | PluginFeatureNotSupportedError | no |
| any other ExchangeError / BaseError | PluginError | no |
"""

from __future__ import annotations

import re

import ccxt.async_support as ccxt

from core.errors import (
    AppError,
    AuthenticationPluginError,
    MalformedResponseError,
    NetworkPluginError,
    PluginError,
    PluginFeatureNotSupportedError,
    RateLimitedPluginError,
    UnknownSymbol,
)

#: (CCXT class, our class, message) in match order.
TRANSLATIONS: list[tuple[type[Exception], type[AppError], str]] = [
    (ccxt.BadSymbol, UnknownSymbol, "unknown symbol"),
    (ccxt.AuthenticationError, AuthenticationPluginError, "credentials were refused"),
    (ccxt.NotSupported, PluginFeatureNotSupportedError, "not supported by this exchange"),
    (ccxt.DDoSProtection, RateLimitedPluginError, "rate limited by the exchange"),
    (ccxt.RateLimitExceeded, RateLimitedPluginError, "rate limited by the exchange"),
    (ccxt.OnMaintenance, NetworkPluginError, "exchange in maintenance"),
    (ccxt.ExchangeNotAvailable, NetworkPluginError, "exchange unavailable"),
    (ccxt.RequestTimeout, NetworkPluginError, "exchange timed out"),
    (ccxt.NetworkError, NetworkPluginError, "network error"),
    (ccxt.BadResponse, MalformedResponseError, "malformed answer from the exchange"),
    (ccxt.OperationFailed, NetworkPluginError, "exchange operation failed"),
    (ccxt.ExchangeError, PluginError, "exchange error"),
    (ccxt.BaseError, PluginError, "exchange error"),
]

_BANNED_UNTIL = re.compile(r"banned until (\d{13})")


def retry_after_of(exc: BaseException, now_ms: int | None = None) -> float | None:
    """The wait the exchange asked for: the attached header value, or Binance's ban message."""
    value = getattr(exc, "retry_after", None)
    if isinstance(value, int | float):
        return float(value)
    match = _BANNED_UNTIL.search(str(exc))
    if match and now_ms is not None:
        return max(0.0, (int(match.group(1)) - now_ms) / 1000)
    return None


def translate(exc: BaseException, provider: str, now_ms: int | None = None) -> AppError:
    """Our error for a CCXT error (or the error itself when it is already ours)."""
    if isinstance(exc, AppError):
        return exc
    for ccxt_cls, ours, message in TRANSLATIONS:
        if isinstance(exc, ccxt_cls):
            retry_after = retry_after_of(exc, now_ms) if ours.temporary else None
            return ours(f"{provider}: {message}",
                        details={"provider": provider, "upstream": type(exc).__name__},
                        retry_after=retry_after)
    return PluginError(f"{provider}: unexpected error",
                       details={"provider": provider, "upstream": type(exc).__name__})

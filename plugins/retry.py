"""Retries of temporary upstream errors, shared by the plugins' fetch methods.

Only errors with ``temporary == True`` (``NetworkPluginError`` and subclasses) are retried, at most
``PROVIDER_RETRIES`` times after the first attempt, with exponential backoff and full jitter. When
the exchange said how long to wait (``retry_after``, from ``Retry-After``) that wait is used instead,
capped by ``PROVIDER_RETRY_MAX_WAIT`` so one request never stalls for a ban's full length; the
error is re-raised when attempts run out. Validation, symbol and credential errors are never
retried. Each retry increments ``provider_retries_total{provider}``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from core.metrics import PROVIDER_RETRIES

log = logging.getLogger(__name__)
T = TypeVar("T")


def parse_retry_after(headers: dict[str, Any] | None, now_ms: int | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date), else None."""
    if not headers:
        return None
    raw = next((str(v) for k, v in headers.items() if k.lower() == "retry-after"), None)
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None  # "inf"/"nan": ignored
    try:
        when = parsedate_to_datetime(raw).timestamp()
    except (TypeError, ValueError):
        return None
    if now_ms is None:
        return None
    return max(0.0, when - now_ms / 1000)


def is_temporary(exc: BaseException) -> bool:
    """True for errors a later identical call may not raise (network, rate limit, outage)."""
    return bool(getattr(exc, "temporary", False))


@dataclass(frozen=True)
class RetryPolicy:
    """How one provider's calls are retried; built from the app config."""

    provider: str
    retries: int = 3
    max_wait: float = 10.0
    base_wait: float = 0.25

    @classmethod
    def from_config(cls, provider: str, config: dict[str, Any]) -> RetryPolicy:
        """Read ``PROVIDER_RETRIES`` and ``PROVIDER_RETRY_MAX_WAIT`` (defaults 3 and 10 s)."""
        return cls(
            provider=provider,
            retries=max(0, int(config.get("PROVIDER_RETRIES", 3))),
            max_wait=max(0.0, float(config.get("PROVIDER_RETRY_MAX_WAIT", 10.0))),
        )

    def wait_seconds(self, state: RetryCallState) -> float:
        """The exchange's ``retry_after`` when given, else exponential backoff with jitter."""
        exc = state.outcome.exception() if state.outcome is not None else None
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, int | float) and retry_after >= 0:
            return min(float(retry_after), self.max_wait)
        jitter = wait_random_exponential(multiplier=self.base_wait, max=self.max_wait)
        return float(jitter(state))

    def _before_sleep(self, state: RetryCallState) -> None:
        PROVIDER_RETRIES.labels(self.provider).inc()
        exc = state.outcome.exception() if state.outcome is not None else None
        log.info("retrying %s after %s (attempt %d)", self.provider, type(exc).__name__,
                 state.attempt_number)

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Await ``fn()``, retrying temporary errors; the last error is re-raised as is."""
        retrying = AsyncRetrying(
            retry=retry_if_exception(is_temporary),
            stop=stop_after_attempt(self.retries + 1),
            wait=self.wait_seconds,
            before_sleep=self._before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await fn()
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

"""Retries of temporary upstream errors, shared by the plugins' fetch methods.

Public names (stable): ``RetryPolicy`` (``wait_seconds``, ``call``),
``parse_retry_after``, ``is_temporary``.

Only errors with ``temporary == True`` (``NetworkPluginError`` and subclasses) are retried, at most
``retries`` times (``PROVIDER_RETRIES``; each plugin instance builds its policy from its settings)
after the first attempt (or, with ``patience``, for that many seconds),
with exponential backoff and full jitter, and never sooner than the exchange said (``retry_after``,
from ``Retry-After``); every wait is capped by ``max_wait`` (``PROVIDER_RETRY_MAX_WAIT``) so one
request never stalls for a ban's full length. The error is re-raised when attempts run out.
Validation, symbol and credential errors are never retried. Each retry of a plugin call increments
``provider_retries_total{provider}``. This is the one retry policy: plugins retry each upstream
request with it, backfill retries its chunks with it (``patience``, its own ``before_sleep``).
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
    stop_after_delay,
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
    """How one provider's calls are retried: ``retries`` times or, with ``patience``, for that
    many seconds (exactly one of the two is given)."""

    provider: str
    #: The longest wait (s) before one retry, whatever the exchange asked.
    max_wait: float
    #: Retries after the first attempt.
    retries: int | None = None
    #: Scale (s) of the exponential backoff.
    base_wait: float = 0.25
    #: Retry for this many seconds instead of ``retries`` times.
    patience: float | None = None

    def __post_init__(self) -> None:
        if (self.retries is None) == (self.patience is None):
            raise ValueError("RetryPolicy takes either retries or patience")

    def wait_seconds(self, state: RetryCallState) -> float:
        """Exponential backoff with jitter, at least the exchange's ``retry_after``, at most
        ``max_wait``."""
        exc = state.outcome.exception() if state.outcome is not None else None
        backoff = float(wait_random_exponential(multiplier=self.base_wait, max=self.max_wait)(state))
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, int | float) and retry_after >= 0:
            backoff = max(backoff, float(retry_after))
        return min(backoff, self.max_wait)

    def _stop(self) -> stop_after_attempt | stop_after_delay:
        if self.patience is not None:
            return stop_after_delay(self.patience)
        assert self.retries is not None  # __post_init__: one of the two is given
        return stop_after_attempt(self.retries + 1)

    def _before_sleep(self, state: RetryCallState) -> None:
        PROVIDER_RETRIES.labels(self.provider).inc()
        exc = state.outcome.exception() if state.outcome is not None else None
        log.info("retrying %s after %s (attempt %d)", self.provider, type(exc).__name__,
                 state.attempt_number)

    async def call(
        self, fn: Callable[[], Awaitable[T]],
        before_sleep: Callable[[RetryCallState], Awaitable[None] | None] | None = None,
    ) -> T:
        """Await ``fn()``, retrying temporary errors; the last error is re-raised as is.
        ``before_sleep`` replaces the default hook (which counts ``provider_retries_total``)."""
        retrying = AsyncRetrying(
            retry=retry_if_exception(is_temporary),
            stop=self._stop(),
            wait=self.wait_seconds,
            before_sleep=before_sleep or self._before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await fn()
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

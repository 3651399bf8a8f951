"""Binance's request-weight limit, as the exchange enforces it on ``/api/v3``.

Every ``/api/v3`` answer carries ``X-MBX-USED-WEIGHT-1M``: the weight used in the current window
(windows are aligned to the clock, as Binance's minutes are), this request included. Weights follow
Binance's documentation: klines 2 per call (any ``limit`` up to 1000), ``exchangeInfo`` 20, ticker
and book ticker 2 for one symbol, ``ping``/``time`` 1.

Enforcement is off until ``limit`` is set (``WeightBook.configure(limit=120)`` or ``POST
/__emulator/weights``). Then a request that would pass the limit is refused with 429 and
``Retry-After`` (seconds to the end of the window) and adds no weight. A client that keeps going
after a 429 in the same window is banned after ``ban_after`` more refused requests: every request
then answers 418 with ``Retry-After`` until the ban ends. Bans last ``ban_seconds`` and double for
a repeat offender (Binance: from 2 minutes up to 3 days). ``window`` (seconds, default 60) can be
scaled down for tests; the header keeps Binance's name.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

#: Request weight per path (Binance spot, one symbol).
WEIGHTS: dict[str, int] = {
    "/api/v3/klines": 2, "/api/v3/exchangeInfo": 20, "/api/v3/ping": 1, "/api/v3/time": 1,
    "/api/v3/ticker/24hr": 2, "/api/v3/ticker/bookTicker": 2, "/api/v3/depth": 5,
}
USED_WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
BAN_CAP_SECONDS = 3 * 24 * 3600.0


def weight_of(path: str) -> int:
    """The weight of a request on ``path``; 0 for paths outside Binance's ``/api/``."""
    if not path.startswith("/api/"):
        return 0
    return WEIGHTS.get(path, 1)


@dataclass
class WeightBook:
    """Weight used per window, and the 429/418 decisions. One per emulator (one client IP)."""

    limit: int | None = None
    window: float = 60.0
    ban_after: int = 3
    ban_seconds: float = 120.0
    used: int = 0
    window_start: float = 0.0
    refused_429: int = 0
    refused_418: int = 0
    bans: int = 0
    banned_until: float = 0.0
    #: Weight used per window served so far (window start -> weight), for benches.
    history: dict[float, int] = field(default_factory=dict)
    _warned: bool = False
    _violations: int = 0

    def configure(self, **settings: Any) -> None:
        """Set ``limit`` (None: count only), ``window``, ``ban_after``, ``ban_seconds``; resets
        the counters and any ban."""
        unknown = set(settings) - {"limit", "window", "ban_after", "ban_seconds"}
        if unknown:
            raise ValueError(f"unknown weight settings: {sorted(unknown)}")
        limit = settings.get("limit", self.limit)
        window = float(settings.get("window", self.window))
        ban_after = int(settings.get("ban_after", self.ban_after))
        ban_seconds = float(settings.get("ban_seconds", self.ban_seconds))
        if limit is not None and int(limit) < 1:
            raise ValueError("limit must be >= 1 or null")
        if not (math.isfinite(window) and window > 0 and math.isfinite(ban_seconds)
                and ban_seconds > 0 and ban_after >= 1):
            raise ValueError("window and ban_seconds must be > 0, ban_after >= 1")
        self.limit = None if limit is None else int(limit)
        self.window, self.ban_after, self.ban_seconds = window, ban_after, ban_seconds
        self.reset_counters()

    def reset_counters(self) -> None:
        self.used, self.window_start, self.refused_429, self.refused_418 = 0, 0.0, 0, 0
        self.bans, self.banned_until, self._warned, self._violations = 0, 0.0, False, 0
        self.history.clear()

    def _roll(self, now: float) -> None:
        start = now - now % self.window
        if start != self.window_start:
            self.window_start, self.used, self._warned, self._violations = start, 0, False, 0

    def admit(self, path: str, now: float | None = None) -> tuple[int, float] | None:
        """None when the request on ``path`` may be served (its weight is added), else the
        refusal ``(status, retry_after seconds)``: 429 past the limit, 418 while banned."""
        weight = weight_of(path)
        if weight == 0:
            return None
        now = time.time() if now is None else now
        self._roll(now)
        if now < self.banned_until:
            self.refused_418 += 1
            return 418, self.banned_until - now
        if self.limit is not None and self.used + weight > self.limit:
            if self._warned:
                self._violations += 1
            if self._violations >= self.ban_after:
                ban = min(self.ban_seconds * 2 ** self.bans, BAN_CAP_SECONDS)
                self.bans += 1
                self.banned_until = now + ban
                self._violations = 0
                self.refused_418 += 1
                return 418, ban
            self._warned = True
            self.refused_429 += 1
            return 429, self.window_start + self.window - now
        self.used += weight
        self.history[self.window_start] = self.used
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"limit": self.limit, "window": self.window, "ban_after": self.ban_after,
                "ban_seconds": self.ban_seconds, "used": self.used,
                "refused_429": self.refused_429, "refused_418": self.refused_418,
                "bans": self.bans, "banned_until": self.banned_until,
                "total_weight": sum(self.history.values())}

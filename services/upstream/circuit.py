"""One circuit breaker's state machine in process memory: closed, open, half-open with one probe.

``services.upstream.breaker.CircuitBreaker`` runs the same machine in Redis for the providers (shared by
the cluster) and falls back to this one while Redis is down; the app's PostgreSQL pool and Redis
client each guard their own dependency with one (``DEPENDENCY_RETRY_AFTER`` as the open time, a
single failure opens it: a dependency that broke a connection is skipped at once, and after the
open time one caller tries it again while the others keep degrading).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

#: ``Circuit.acquire`` codes: go, go as the half-open probe, refused.
ALLOWED, PROBE, REFUSED = 0, 1, 2


@dataclass
class Circuit:
    """``acquire`` before a call, ``record`` its outcome (``ok``, ``fail``, ``neutral``)."""

    threshold: int = 5
    open_seconds: float = 30.0
    probe_seconds: float = 15.0
    _state: str = "closed"
    _failures: int = 0
    _until: float = 0.0
    _probe_until: float = 0.0

    def acquire(self) -> tuple[int, float]:
        """(``ALLOWED`` | ``PROBE`` | ``REFUSED``, seconds until a call may be tried again)."""
        now = time.monotonic()
        if self._state == "closed":
            return ALLOWED, 0.0
        if self._state == "open" and now < self._until:
            return REFUSED, self._until - now
        if now < self._probe_until:
            return REFUSED, self._probe_until - now
        self._state, self._probe_until = "half_open", now + self.probe_seconds
        return PROBE, 0.0

    def record(self, probe: bool, outcome: str) -> bool:
        """Record one call's outcome; True when the state changed (see ``state``)."""
        if outcome == "neutral":
            if probe and self._state == "half_open":
                self._probe_until = 0.0
            return False
        if outcome == "ok":
            changed = self._state != "closed"
            self.reset()
            return changed
        if self._state == "open":
            return False
        self._failures += 1
        if self._state == "half_open" or self._failures >= self.threshold:
            self._state, self._until = "open", time.monotonic() + self.open_seconds
            self._probe_until = 0.0
            return True
        return False

    @property
    def state(self) -> str:
        """``closed``, ``open``, or ``half_open`` (also an open one whose time is over)."""
        if self._state == "open" and time.monotonic() >= self._until:
            return "half_open"
        return self._state

    def reset(self) -> None:
        """Closed, no failures counted (a readiness check forces a fresh try this way)."""
        self._state, self._failures, self._until, self._probe_until = "closed", 0, 0.0, 0.0

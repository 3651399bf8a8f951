"""Logging a dependency's outage once per state change, not once per failed call.

With Redis or PostgreSQL down every request fails to read or write it; a warning per call buried
the log (five a request). The dependency's owner (``RedisClient``, ``Database``) reports each
call's outcome here: the first failure after a success logs one WARNING, the first success after
a failure one INFO; callers that skip the dependency log at DEBUG.
"""

from __future__ import annotations

import logging


class OutageLog:
    """``failed(error)`` / ``recovered()`` after each call; logs only when the state changes."""

    def __init__(self, logger: logging.Logger, name: str) -> None:
        self.logger = logger
        self.name = name
        self.down = False

    def failed(self, error: object) -> None:
        """A call failed: one WARNING when ``name`` was up until now."""
        if not self.down:
            self.down = True
            self.logger.warning("%s unavailable, serving degraded until it is back: %s", self.name, error)

    def recovered(self) -> None:
        """A call succeeded: one INFO when ``name`` was down until now."""
        if self.down:
            self.down = False
            self.logger.info("%s available again", self.name)

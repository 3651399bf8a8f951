"""``REQUEST_DEADLINE``: one deadline per request, however many provider waits it makes.

Public names (stable): ``request_deadline``, ``remaining``, ``bounded``, ``DeadlineExceeded``.

``async with request_deadline(seconds):`` sets the deadline for the code inside (a ContextVar,
so concurrent requests each keep their own; an inner call keeps an outer, earlier deadline).
``remaining()`` is the time left (None without a deadline), for ``asyncio.wait_for`` around a
wait that may be slow; such a wait is shielded when the work should go on in the background.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import TypeVar

from core.errors import NetworkPluginError

T = TypeVar("T")
_DEADLINE: ContextVar[float | None] = ContextVar("request_deadline", default=None)


class DeadlineExceeded(NetworkPluginError):
    """The provider did not answer within ``REQUEST_DEADLINE`` and nothing stored can answer:
    503 ``provider_unavailable`` with ``Retry-After``."""


@asynccontextmanager
async def request_deadline(seconds: float) -> AsyncIterator[None]:
    """Bound the waits inside to ``seconds`` from now (or an outer deadline, if earlier)."""
    at = asyncio.get_running_loop().time() + seconds
    outer = _DEADLINE.get()
    token = _DEADLINE.set(at if outer is None else min(at, outer))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def remaining() -> float | None:
    """Seconds left before the current deadline (0 when past), or None without one."""
    at = _DEADLINE.get()
    return None if at is None else max(0.0, at - asyncio.get_running_loop().time())


async def bounded(aw: Awaitable[T], seconds: float, what: str) -> T:
    """``await aw`` for at most ``seconds`` (cancelling it after), else ``DeadlineExceeded``."""
    try:
        return await asyncio.wait_for(aw, seconds)
    except TimeoutError:
        raise DeadlineExceeded(f"{what} did not answer within REQUEST_DEADLINE ({seconds:g} s)",
                               retry_after=max(1.0, seconds)) from None

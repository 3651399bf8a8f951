"""What a poller needs from its surroundings: where its frames go, where closed bars are stored,
and how one bucket is read back (for revisions of timeframes other than 1m); and where a
connection's messages are written."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from core.timeframes import Bar
from core.types import Series
from services.hub.commits import Commit
from services.hub.frames import Frame

#: The bar of one bucket (series, timeframe, bucket open time), from the data REST serves.
BucketReader = Callable[[Series, str, int], Awaitable[Bar | None]]


class Output(Protocol):
    """Where a poller's frames go (the hub): status frames one by one, bar frames committed
    (numbered, published and saved with the poller's state: ``services.hub.commits``)."""

    async def publish(self, frame: Frame) -> None: ...

    async def commit(self, item: Commit) -> None: ...


class Writer(Protocol):
    """Storage of closed 1m bars (``DbSource``)."""

    async def write(self, series: Series, bars: Sequence[Sequence[float]],
                    complete: Sequence[tuple[int, int]]) -> int: ...


#: Where one client connection's messages go: the ASGI ``websocket.send`` of a message's text,
#: awaited (it returns once the server has taken it, and waits while the peer reads slower).
Outlet = Callable[[str], Awaitable[None]]

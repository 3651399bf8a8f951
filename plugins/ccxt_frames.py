"""Frames of CCXT Pro kline streams, checked at the boundary before CCXT parses them.

A frame that is not JSON, or a kline frame whose bar does not parse, is counted (``malformed``,
``stream_malformed_frames_total``) and skipped, so it can neither end CCXT's receive loop nor
reach a client. Exchanges whose raw kline frames we can read (``FRAME_READERS``: Binance, with
``x`` for closed and ``E`` for the event time) also queue each update as a ``KlineUpdate``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from ccxt.async_support.base.ws.client import Client

from core.metrics import STREAM_MALFORMED
from core.timeframes import Bar

log = logging.getLogger(__name__)
#: Updates kept per stream between two ``watch`` calls (older ones are dropped: REST refills).
MAX_BUFFERED = 1000


@dataclass(frozen=True)
class KlineUpdate:
    """One kline event: the bar, closed per the exchange, and its event time (ms) if known."""

    bar: Bar
    closed: bool
    event_ms: int | None


def finite(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ValueError(f"not a number: {raw!r:.40}")
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(f"not finite: {raw!r:.40}")
    return value


def binance_kline(message: Any) -> tuple[str, str, KlineUpdate] | None:
    """(market id, interval, update) of a Binance kline frame (raw or combined), None for any
    other frame; raises ``ValueError`` when a kline frame's bar does not parse."""
    if isinstance(message, dict) and isinstance(message.get("data"), dict):
        message = message["data"]
    if not isinstance(message, dict) or message.get("e") != "kline":
        return None
    k = message.get("k")
    if not isinstance(k, dict):
        raise ValueError("kline frame without its bar")
    ts, market_id, interval, closed = k.get("t"), k.get("s"), k.get("i"), k.get("x")
    if not (isinstance(ts, int) and not isinstance(ts, bool) and isinstance(market_id, str)
            and isinstance(interval, str) and isinstance(closed, bool)):
        raise ValueError("kline frame without t, s, i or x")
    bar = [ts, *(finite(k.get(f)) for f in ("o", "h", "l", "c", "v"))]
    event = message.get("E")
    event_ms = event if isinstance(event, int) and not isinstance(event, bool) else None
    return market_id, interval, KlineUpdate(bar, closed, event_ms)


#: Raw kline frame readers per exchange (data, not branches); others use CCXT's parsed candles.
FRAME_READERS = {"binance": binance_kline}


class CheckedClient(Client):  # type: ignore[misc]
    """CCXT's WebSocket client, except that a text frame that is not JSON is handed on as such
    (CCXT's ``json.loads`` raised out of its receive loop: the connection stayed open, deaf)."""

    def handle_text_or_binary_message(self, data: Any) -> None:
        try:
            super().handle_text_or_binary_message(data)
        except ValueError as exc:  # orjson.JSONDecodeError
            self.on_message_callback(self, f"not JSON ({exc}): {data!s:.60}")


class CheckedFrames:
    """Mixed in front of a ``ccxt.pro`` class: every inbound frame is checked first (module)."""

    id: str
    malformed: int
    updates: dict[tuple[str, str], deque[KlineUpdate]]
    #: A future per stream that a caller waits on for its next update (set when one is queued).
    arrivals: dict[tuple[str, str], asyncio.Future[None]]

    def client(self, url: str) -> Any:
        client = super().client(url)  # type: ignore[misc]
        if type(client) is Client:  # CCXT makes plain clients; ours only differs in one method
            client.__class__ = CheckedClient
        return client

    def handle_message(self, client: Any, message: Any) -> None:
        reader = FRAME_READERS.get(self.id)
        try:
            if not isinstance(message, dict | list):
                raise ValueError(f"not a JSON frame: {message!s:.60}")
            kline = reader(message) if reader is not None else None
        except ValueError as exc:
            self._malformed(exc)
            return
        if kline is not None:
            market_id, interval, update = kline
            key = (market_id, interval)
            if key not in self.updates:
                self.updates[key] = deque(maxlen=MAX_BUFFERED)
            self.updates[key].append(update)
            arrived = self.arrivals.pop(key, None)
            if arrived is not None and not arrived.done():
                arrived.set_result(None)
        try:
            super().handle_message(client, message)  # type: ignore[misc]
        except Exception as exc:  # CCXT failed on a frame: skipped, counted, never crashes the loop
            self._malformed(exc)

    def _malformed(self, exc: BaseException) -> None:
        self.malformed += 1
        STREAM_MALFORMED.labels(self.id).inc()
        log.warning("%s stream: malformed frame skipped: %s", self.id, exc)



"""CCXT plumbing for ``CryptoPlugin``: per-exchange capabilities (data, not branches), the
boundary subclass that checks raw bodies and keeps ``Retry-After``, and base URL rebasing.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import ccxt.async_support as ccxt

from core.errors import MalformedResponseError
from core.timeframes import Bar
from plugins.base import Capabilities
from plugins.ccxt_frames import finite  # one number check for REST rows and stream frames
from plugins.retry import parse_retry_after

_ALL = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d", "1w")

#: Capabilities per CCXT exchange id. ``extra["always_has_bars"]``: the exchange emits a kline for
#: every bucket (zero-volume ones included), so an empty page over the past is a broken answer.
#: ``extra["ccxt_options"]``: CCXT options set on the exchange object (Binance: with keys, CCXT
#: would also load margin pairs from private endpoints on every markets load).
#: ``extra["weights"]``: the exchange's request weight per plugin method, in which its provider
#: budget is expressed (Binance: klines and one-symbol ticker 2); CCXT's own fixed throttle is off
#: for these exchanges: the provider budget paces them. ``extra["used_weight_header"]``: the answer
#: header in which the exchange states the weight used in its current minute.
CAPABILITIES: dict[str, Capabilities] = {
    "binance": Capabilities(1000, _ALL, 2.0, True, {
        "always_has_bars": True, "ccxt_options": {"fetchMargins": False},
        "weights": {"fetch_ohlcv": 2, "fetch_ticker": 2},
        "used_weight_header": "x-mbx-used-weight-1m"}),
    "bybit": Capabilities(1000, _ALL, 2.0, True),
    # OKX's 6H/12H/1D/1W candles are aligned to Hong Kong time (UTC+8), not to UTC buckets.
    "okx": Capabilities(300, ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h"), 2.0, True),
    # Kraken's OHLC answers only its latest 720 bars, whatever ``since`` asks.
    "kraken": Capabilities(720, ("1m", "5m", "15m", "30m", "1h", "4h", "1d", "1w"), 3.0, True,
                           {"history_bars": 720}),
    "coinbase": Capabilities(300, ("1m", "5m", "15m", "30m", "1h", "2h", "6h", "1d"), 3.0, True),
}
DEFAULT_CAPABILITIES = Capabilities(500, ("1m",), 5.0, True)


def capabilities_for(exchange_id: str) -> Capabilities:
    """The capability row of ``exchange_id`` (a conservative default for unlisted ones)."""
    return CAPABILITIES.get(exchange_id, DEFAULT_CAPABILITIES)


class BoundaryMixin:
    """Mixed in front of a CCXT exchange class to see what CCXT's parsing hides:

    - ``parse_ohlcvs`` / ``parse_ohlcv`` see the raw kline payload: a body that is not a list (the
      text of invalid JSON, an HTML page) or a row that does not parse to a bar with a timestamp
      (an error object that CCXT's ``to_array`` turned into "rows") is a ``BadResponse`` instead
      of silently no bars;
    - ``handle_errors`` attaches the ``Retry-After`` header (seconds) to the CCXT error raised for
      the response, so the retry helper can honour it.
    """

    id: str

    def parse_ohlcvs(self, ohlcvs: Any, *args: Any, **kwargs: Any) -> Any:
        if ohlcvs is not None and not isinstance(ohlcvs, list):
            raise ccxt.BadResponse(f"{self.id} OHLCV body is {type(ohlcvs).__name__}, not a list")
        return super().parse_ohlcvs(ohlcvs, *args, **kwargs)  # type: ignore[misc]

    def parse_ohlcv(self, ohlcv: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(ohlcv, list | dict):
            raise ccxt.BadResponse(f"{self.id} kline row is {type(ohlcv).__name__}")
        row = super().parse_ohlcv(ohlcv, *args, **kwargs)  # type: ignore[misc]
        if not isinstance(row, list) or not row or not isinstance(row[0], int):
            raise ccxt.BadResponse(f"{self.id} kline row without a timestamp")
        return row

    def handle_errors(self, code: int, reason: str, url: str, method: str, headers: Any,
                      body: Any, *args: Any) -> Any:
        try:
            result = super().handle_errors(  # type: ignore[misc]
                code, reason, url, method, headers, body, *args)
            # CCXT maps the HTTP status right after this hook; do it here to see the headers.
            self.handle_http_status_code(code, reason, url, method, body or "")  # type: ignore[attr-defined]
        except ccxt.BaseError as exc:
            retry_after = parse_retry_after(headers if isinstance(headers, dict) else None,
                                            int(time.time() * 1000))
            if retry_after is not None:
                exc.retry_after = retry_after  # type: ignore[attr-defined]
            raise
        return result


_CLASSES: dict[str, type[Any]] = {}


def exchange_class(exchange_id: str) -> type[Any] | None:
    """The CCXT async class for ``exchange_id`` with ``BoundaryMixin`` in front, or None."""
    if exchange_id not in _CLASSES:
        base = getattr(ccxt, exchange_id, None)
        if exchange_id not in ccxt.exchanges or not isinstance(base, type):
            return None
        _CLASSES[exchange_id] = type(f"Checked_{exchange_id}", (BoundaryMixin, base), {})
    return _CLASSES[exchange_id]


def rebase_urls(urls: Any, base_url: str) -> Any:
    """Every http(s) URL in ``urls`` (str or nested dicts/lists) with its scheme and host
    replaced by ``base_url``'s (whose path, if any, is prefixed); paths and queries are kept."""
    if isinstance(urls, dict):
        return {k: rebase_urls(v, base_url) for k, v in urls.items()}
    if isinstance(urls, list):
        return [rebase_urls(v, base_url) for v in urls]
    if isinstance(urls, str) and urls.startswith(("http://", "https://")):
        base = urlsplit(base_url)
        parts = urlsplit(urls)
        path = base.path.rstrip("/") + parts.path
        return urlunsplit((base.scheme, base.netloc, path, parts.query, parts.fragment))
    return urls


def clean_bars(
    raw: Any, provider: str, since: int, until: int | None, limit: int
) -> list[Bar]:
    """CCXT's parsed OHLCV checked row by row: ``[int ts, o, h, l, c, v]`` with finite numbers,
    inside ``[since, until)``, strictly ascending, at most ``limit``. A row that is not a bar
    means the body was not a kline list: ``MalformedResponseError``."""
    if not isinstance(raw, list):
        raise MalformedResponseError(f"{provider}: OHLCV answer is not a list")
    by_ts: dict[int, Bar] = {}
    try:
        for row in raw:
            if not isinstance(row, list | tuple) or len(row) < 6 or not isinstance(row[0], int):
                raise ValueError(f"not a bar: {row!r:.80}")
            ts = row[0]
            volume = 0.0 if row[5] is None else finite(row[5])
            if ts >= since and (until is None or ts < until):
                by_ts[ts] = [ts, *(finite(v) for v in row[1:5]), volume]
    except ValueError as exc:
        raise MalformedResponseError(f"{provider}: malformed OHLCV row",
                                     details={"provider": provider, "reason": str(exc)}) from exc
    return [by_ts[ts] for ts in sorted(by_ts)][:limit]

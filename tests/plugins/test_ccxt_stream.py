"""plugins/ccxt_stream.py: CCXT Pro kline streams against the emulator (the real ccxt.pro client)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from core.errors import NetworkPluginError, PluginFeatureNotSupportedError
from core.timeframes import MINUTE_MS
from plugins.ccxt_frames import checked_row
from plugins.ccxt_stream import KlineStreams, KlineUpdate, rebase_ws_urls, stream_possible
from tests.support.exchange_emulator import ExchangeEmulator, fixtures
from tests.support.exchange_emulator.candles import minute_candle
from tests.support.exchange_emulator.checks import NO_LEAKS
from tests.support.plugin_kit import stream_settings

pytestmark = NO_LEAKS
emulator = fixtures.emulator
T0 = 1_704_067_200_000
NOW = T0 + 5 * MINUTE_MS + 30_000


@pytest_asyncio.fixture
async def streams(emulator: ExchangeEmulator) -> AsyncIterator[KlineStreams]:
    emulator.now_ms = NOW
    emulator.streams.interval = 0.05
    ks = KlineStreams("binance", ws_base_url=emulator.ws_url, rest_base_url=emulator.url,
                      **stream_settings())
    try:
        yield ks
    finally:
        await ks.close()


def test_urls_and_support_rules() -> None:
    urls = {"ws": {"spot": "wss://stream.binance.com:9443/ws", "api": "https://api.binance.com"}}
    assert rebase_ws_urls(urls, "ws://127.0.0.1:9100/p/") == {
        "ws": {"spot": "ws://127.0.0.1:9100/p/ws", "api": "https://api.binance.com"}}
    assert stream_possible("binance", None, None)
    assert stream_possible("binance", "http://x", "ws://x")
    assert not stream_possible("binance", "http://proxy", None)  # never the real stream behind it
    assert not stream_possible("nosuchexchange", None, None)


async def test_watch_gives_bars_closed_by_the_next_one(
    emulator: ExchangeEmulator, streams: KlineStreams
) -> None:
    first = await asyncio.wait_for(streams.watch("BTC/USDT", "1m"), 5)
    assert first[-1].bar[:5] == list(minute_candle("BTCUSDT", T0 + 5 * MINUTE_MS)[:5])
    # CCXT's unified candle has no closed flag nor event time (ccxt/ccxt#21885)
    assert not first[-1].closed and first[-1].event_ms is None
    emulator.now_ms = NOW + MINUTE_MS
    seen: list[KlineUpdate] = []
    while not any(u.bar[0] == T0 + 6 * MINUTE_MS for u in seen):
        seen += await asyncio.wait_for(streams.watch("BTC/USDT", "1m"), 5)
    closed = [u for u in seen if u.closed]
    assert [u.bar[0] for u in closed] == [T0 + 5 * MINUTE_MS]
    # a second stream of the same provider shares the connection
    await asyncio.wait_for(streams.watch("ETH/USDT", "5m"), 5)
    assert emulator.calls("/ws/*") == 1
    assert emulator.streams.subscriptions() == ["btcusdt@kline_1m", "ethusdt@kline_5m"]


@pytest.mark.parametrize("kind", ["invalid", "json"])
async def test_malformed_frames_deafen_the_connection_until_it_is_reset(
    emulator: ExchangeEmulator, streams: KlineStreams, kind: str
) -> None:
    """CCXT Pro's receive loop ends on a frame that is not JSON, or a kline frame without its
    symbol (the error escapes its callback, and CCXT has no public hook for it): the stream goes
    silent, and ``reset_silent`` closes it so that the next watch dials anew."""
    await asyncio.wait_for(streams.watch("BTC/USDT", "1m"), 5)
    emulator.streams.malformed, emulator.streams.malformed_kind = 1, kind
    with pytest.raises(TimeoutError):
        while True:
            await asyncio.wait_for(streams.watch("BTC/USDT", "1m"), 0.5)
    assert await streams.reset_silent(0.2) == 1
    assert await streams.reset_silent(0.2) == 0  # a fresh exchange object: nothing to close
    got = await asyncio.wait_for(streams.watch("BTC/USDT", "1m"), 5)
    assert got[-1].bar[0] == T0 + 5 * MINUTE_MS
    assert emulator.streams.handshakes == 2
    assert emulator.calls("/api/v3/exchangeInfo") == 1  # the markets were kept


def test_candles_that_do_not_parse_are_counted_and_skipped() -> None:
    ks = KlineStreams("binance", **stream_settings())
    key = ("BTC/USDT", "1m")
    good = [T0, 1.0, 2.0, 0.5, 1.5, 3.0]
    got = ks._inferred(key, [[None, None, None, None, None, None], good, [T0 + MINUTE_MS, "x"]])
    assert [u.bar for u in got] == [good] and ks.malformed == 2
    assert checked_row([T0, "1", 2, 0.5, 1.5, None]) == [T0, 1.0, 2.0, 0.5, 1.5, 0.0]
    for bad in ([T0, 1, 2, 0.5, float("nan"), 1], [True, 1, 2, 0.5, 1, 1], "row", [T0, 1]):
        with pytest.raises(ValueError):
            checked_row(bad)
    nxt = ks._inferred(key, [[T0 + MINUTE_MS, 1.5, 1.6, 1.4, 1.55, 1.0]])
    assert [(u.bar[0], u.closed) for u in nxt] == [(T0, True), (T0 + MINUTE_MS, False)]


async def test_drop_refusal_and_silence(emulator: ExchangeEmulator, streams: KlineStreams) -> None:
    await asyncio.wait_for(streams.watch("BTC/USDT", "1m"), 5)
    emulator.streams.drop()
    with pytest.raises(NetworkPluginError):
        while True:
            await asyncio.wait_for(streams.watch("BTC/USDT", "1m"), 5)
    assert (await asyncio.wait_for(streams.watch("BTC/USDT", "1m"), 5))[-1].bar
    assert emulator.streams.handshakes == 2  # watched again: dialled and subscribed again
    emulator.streams.stalled = True
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(streams.watch("BTC/USDT", "1m"), 0.5)
    await asyncio.sleep(0.3)
    assert await streams.reset_silent(0.2) == 1
    emulator.streams.stalled = False
    assert (await asyncio.wait_for(streams.watch("BTC/USDT", "1m"), 5))[-1].bar
    assert emulator.streams.handshakes == 3


async def test_rest_override_without_stream_url_is_refused(emulator: ExchangeEmulator) -> None:
    ks = KlineStreams("binance", rest_base_url=emulator.url, **stream_settings())
    try:
        with pytest.raises(PluginFeatureNotSupportedError):
            await ks.watch("BTC/USDT", "1m")
    finally:
        await ks.close()
    assert emulator.calls("/ws/*") == 0


async def test_first_subscriptions_go_out_in_one_message(
    emulator: ExchangeEmulator, streams: KlineStreams
) -> None:
    pairs = [("BTC/USDT", "1m"), ("ETH/USDT", "1m"), ("SOL/USDT", "5m"), ("BNB/USDT", "1h")]
    got = await asyncio.wait_for(asyncio.gather(*(streams.watch(s, tf) for s, tf in pairs)), 5)
    assert all(got)
    subscribes = [m for m in emulator.streams.messages if m.get("method") == "SUBSCRIBE"]
    assert len(subscribes) == 1 and len(subscribes[0]["params"]) == 4
    emulator.streams.drop()  # after a reconnect they are sent again, together
    with pytest.raises(NetworkPluginError):
        while True:
            await asyncio.wait_for(streams.watch("BTC/USDT", "1m"), 5)
    await asyncio.wait_for(asyncio.gather(*(streams.watch(s, tf) for s, tf in pairs)), 5)
    assert emulator.streams.subscriptions() == sorted(
        ["btcusdt@kline_1m", "ethusdt@kline_1m", "solusdt@kline_5m", "bnbusdt@kline_1h"])
    assert len([m for m in emulator.streams.messages if m.get("method") == "SUBSCRIBE"]) == 2

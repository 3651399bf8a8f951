"""TradingView UDF under /udf, checked against the field list of TradingView's UDF documentation
(config, symbol resolve, search, history with every ``s`` value, server time) and against
/api/v1/ohlcv, whose orchestrator and caches it shares."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import ccxt.async_support as ccxt
import pytest
from quart import Quart
from quart.typing import TestClientProtocol

from app_extensions.services import get_services
from plugins.base import ProviderInfo
from plugins.crypto import precision_step
from services.udf import RESOLUTIONS, UdfService, price_scale, step_decimals
from tests.support.backfill import emu_config, running_app
from tests.support.exchange_emulator import ExchangeEmulator
from tests.support.exchange_emulator.fixtures import emulator  # noqa: F401
from tests.support.ws import wait_for

API_RESOLUTIONS = ["1", "3", "5", "15", "30", "60", "120", "240", "360", "720", "1D", "1W", "1M"]
#: Every field docs/api.md names for /udf/symbols (TradingView's SymbolInfo).
SYMBOL_FIELDS = {"name", "ticker", "description", "type", "exchange", "listed_exchange", "session",
                 "timezone", "minmov", "pricescale", "has_intraday", "has_daily",
                 "has_weekly_and_monthly", "supported_resolutions", "volume_precision", "data_status"}
SEARCH_FIELDS = {"symbol", "full_name", "description", "exchange", "ticker", "type"}
T2024 = 1_704_067_200  # 2024-01-01 00:00 UTC (a Monday), in seconds
SIM = "SIM:SIM/USD"


async def udf(client: TestClientProtocol, path: str, **params: Any) -> tuple[int, Any]:
    response = await client.get(f"/udf/{path}", query_string=params)
    return response.status_code, await response.get_json()


async def ohlcv(client: TestClientProtocol, **params: Any) -> list[list[float]]:
    query = {"market": "sim", "provider": "sim", "symbol": "SIM/USD", **params}
    response = await client.get("/api/v1/ohlcv", query_string=query)
    assert response.status_code == 200, await response.get_data(as_text=True)
    bars: list[list[float]] = (await response.get_json())["bars"]
    return bars


def columns(bars: list[list[float]]) -> dict[str, list[float]]:
    return {"t": [int(b[0]) // 1000 for b in bars], "o": [b[1] for b in bars], "h": [b[2] for b in bars],
            "l": [b[3] for b in bars], "c": [b[4] for b in bars], "v": [b[5] for b in bars]}


def sim_calls(app: Quart) -> int:
    plugin = get_services(app).markets._instances
    return sum(entry.plugin.calls.get("fetch_ohlcv", 0) for entry in plugin.values()  # type: ignore[attr-defined]
               if entry.plugin.provider_id == "sim")


# --- config, symbols, search, time ---------------------------------------------------------------
async def test_config_has_every_field_of_the_udf_documentation(client: TestClientProtocol) -> None:
    status, body = await udf(client, "config")
    assert status == 200
    assert body["supported_resolutions"] == API_RESOLUTIONS
    assert body["supports_search"] is True and body["supports_group_request"] is False
    assert body["supports_marks"] is False and body["supports_timescale_marks"] is False
    assert body["supports_time"] is True
    assert all(set(e) == {"value", "name", "desc"} for e in body["exchanges"])
    assert {"", "SIM", "BINANCE"} <= {e["value"] for e in body["exchanges"]}
    assert all(set(t) == {"name", "value"} for t in body["symbols_types"])
    assert {"", "crypto", "stock"} <= {t["value"] for t in body["symbols_types"]}


async def test_sim_symbol_info_is_24x7_utc_with_the_sims_precision(client: TestClientProtocol) -> None:
    status, info = await udf(client, "symbols", symbol=SIM)
    assert status == 200 and set(info) >= SYMBOL_FIELDS, SYMBOL_FIELDS - set(info)
    assert info["name"] == "SIM/USD" and info["ticker"] == SIM
    assert info["exchange"] == info["listed_exchange"] == "SIM"
    assert (info["session"], info["timezone"], info["type"]) == ("24x7", "Etc/UTC", "crypto")
    assert (info["pricescale"], info["minmov"], info["volume_precision"]) == (100, 1, 3)  # its steps
    assert info["has_intraday"] is info["has_daily"] is info["has_weekly_and_monthly"] is True
    assert info["supported_resolutions"] == API_RESOLUTIONS and info["data_status"] == "streaming"


async def test_crypto_and_stock_symbol_info_come_from_the_providers_precision(
    emulator: ExchangeEmulator, app_config: dict[str, Any]  # noqa: F811
) -> None:
    config = emu_config(app_config, emulator, ALPACA_API_KEY_ID="key", ALPACA_API_SECRET_KEY="secret",
                        PROVIDER_URLS={"binance": emulator.url, "alpaca": emulator.url})
    async with running_app(config) as app:
        client = app.test_client()
        _, btc = await udf(client, "symbols", symbol="BINANCE:BTC/USDT")  # tickSize 0.01, step 0.00001
        assert (btc["pricescale"], btc["minmov"], btc["volume_precision"]) == (100, 1, 5)
        assert (btc["session"], btc["timezone"], btc["type"], btc["exchange"]) == ("24x7", "Etc/UTC", "crypto",
                                                                                   "BINANCE")
        _, eth = await udf(client, "symbols", symbol="binance:ETH/BTC")  # tickSize 0.000001
        assert (eth["pricescale"], eth["minmov"], eth["ticker"]) == (10**6, 1, "BINANCE:ETH/BTC")
        _, aapl = await udf(client, "symbols", symbol="ALPACA:AAPL")
        assert set(aapl) >= SYMBOL_FIELDS
        assert (aapl["pricescale"], aapl["minmov"], aapl["volume_precision"]) == (100, 1, 0)
        assert (aapl["session"], aapl["timezone"], aapl["type"]) == ("0930-1600", "America/New_York", "stock")


@pytest.mark.parametrize(("tick", "scale"), [(0.01, (100, 1)), (0.5, (10, 5)), (5.0, (1, 5)), (1e-6, (10**6, 1)),
                                             (0.00025, (100000, 25)), (None, (10**8, 1)),
                                             (float("inf"), (10**8, 1)), (float("nan"), (10**8, 1)), (0.0, (10**8, 1))])
def test_price_scale_from_a_tick(tick: float | None, scale: tuple[int, int]) -> None:
    assert price_scale(tick) == scale


@pytest.mark.parametrize(("value", "mode", "tick"), [
    (0.01, ccxt.TICK_SIZE, 0.01), (2, ccxt.DECIMAL_PLACES, 0.01), (0, ccxt.DECIMAL_PLACES, 1.0),
    (4, ccxt.SIGNIFICANT_DIGITS, None), (None, ccxt.TICK_SIZE, None), (True, ccxt.TICK_SIZE, None),
    (-1, ccxt.DECIMAL_PLACES, None), (0, ccxt.TICK_SIZE, None),
])
def test_ccxt_precision_becomes_a_step(value: Any, mode: int, tick: float | None) -> None:
    assert precision_step(value, mode) == tick


def test_volume_precision_from_a_step() -> None:
    assert [step_decimals(s) for s in (1.0, 0.1, 1e-5, 1e-8, None)] == [0, 1, 5, 8, 8]


async def test_search_answers_every_field_and_honours_its_filters(client: TestClientProtocol) -> None:
    status, found = await udf(client, "search", query="sim", exchange="SIM", limit=10)
    assert status == 200 and len(found) == 4
    assert all(set(item) == SEARCH_FIELDS for item in found)
    assert {item["full_name"] for item in found} == {"SIM:SIM/USD", "SIM:SIMA/USD", "SIM:SIMB/EUR", "SIM:SIMC/USD"}
    assert all(item["ticker"] == item["full_name"] and item["exchange"] == "SIM" for item in found)
    _, two = await udf(client, "search", query="SIM", exchange="sim", limit=2)
    assert len(two) == 2
    _, eur = await udf(client, "search", query="eur", exchange="SIM")
    assert [item["symbol"] for item in eur] == ["SIMB/EUR"]
    _, stocks = await udf(client, "search", query="SIM", exchange="SIM", type="stock")
    assert stocks == []


async def test_time_is_plain_seconds(client: TestClientProtocol) -> None:
    response = await client.get("/udf/time")
    text = await response.get_data(as_text=True)
    assert response.status_code == 200 and response.mimetype == "text/plain"
    assert abs(int(text) - time.time()) < 5


# --- history ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("resolution", list(RESOLUTIONS))
async def test_history_equals_ohlcv_for_every_resolution(client: TestClientProtocol, resolution: str) -> None:
    tf = RESOLUTIONS[resolution]
    size = {"m": 60, "h": 3600, "d": 86400, "w": 604800}[tf[-1]] * int(tf[:-1])
    start = T2024 + 7 * 86400 + 17  # unaligned: the first bar is the next bucket
    to = start + 40 * size
    status, body = await udf(client, "history", symbol=SIM, resolution=resolution, to=to, **{"from": start})
    rest = await ohlcv(client, timeframe=tf, start=start * 1000, end=to * 1000, limit=5000)
    assert status == 200 and body["s"] == "ok"
    assert {k: body[k] for k in "tohlcv"} == columns(rest)
    assert len(body["t"]) == 40 and body["t"][0] >= start and body["t"][-1] < to
    # countback: the latest N bars ending before `to`, from ignored; `to` on a bucket is exclusive.
    edge = body["t"][-1]
    status, back = await udf(client, "history", symbol=SIM, resolution=resolution, to=edge, countback=7,
                             **{"from": edge - size})
    latest = await ohlcv(client, timeframe=tf, end=edge * 1000, limit=7)
    assert status == 200 and {k: back[k] for k in "tohlcv"} == columns(latest)
    assert len(back["t"]) == 7 and back["t"][-1] == edge - size and edge not in back["t"]


async def test_history_of_a_range_larger_than_a_page_answers_its_latest_bars(client: TestClientProtocol) -> None:
    to = T2024 + 6000 * 60
    status, body = await udf(client, "history", symbol=SIM, resolution="1", to=to, **{"from": T2024})
    assert status == 200 and len(body["t"]) == 5000  # OHLCV_MAX_LIMIT, newest first
    assert body["t"][0] == to - 5000 * 60 and body["t"][-1] == to - 60


async def test_history_costs_the_provider_nothing_after_ohlcv(app: Quart, client: TestClientProtocol) -> None:
    start, to = T2024 + 3 * 86400, T2024 + 3 * 86400 + 6 * 3600
    await ohlcv(client, timeframe="1h", start=start * 1000, end=to * 1000)
    calls = sim_calls(app)
    _, body = await udf(client, "history", symbol=SIM, resolution="60", to=to, **{"from": start})
    assert len(body["t"]) == 6 and sim_calls(app) == calls  # the same answer cache
    _, five = await udf(client, "history", symbol=SIM, resolution="5", to=to, **{"from": start})
    assert len(five["t"]) == 72 and sim_calls(app) == calls  # stored 1m bars, aggregated


async def test_no_data_before_the_first_bar_has_no_next_time(client: TestClientProtocol) -> None:
    status, body = await udf(client, "history", symbol=SIM, resolution="60", to=1_600_003_600,
                             **{"from": 1_600_000_000})
    assert status == 200 and body == {"s": "no_data"}


async def test_no_data_over_a_weekend_points_to_fridays_last_bar(
    emulator: ExchangeEmulator, app_config: dict[str, Any]  # noqa: F811
) -> None:
    config = emu_config(app_config, emulator, ALPACA_API_KEY_ID="key", ALPACA_API_SECRET_KEY="secret",
                        PROVIDER_URLS={"binance": emulator.url, "alpaca": emulator.url})
    saturday = T2024 + 5 * 86400
    async with running_app(config) as app:
        client = app.test_client()
        status, body = await udf(client, "history", symbol="ALPACA:AAPL", resolution="1",
                                 to=saturday + 6 * 3600, **{"from": saturday})
        assert status == 200 and set(body) == {"s", "nextTime"} and body["s"] == "no_data"
        assert body["nextTime"] == saturday - 3 * 3600 - 60  # Friday 20:59 UTC = 15:59 New York
        _, friday = await udf(client, "history", symbol="ALPACA:AAPL", resolution="1", to=saturday,
                              countback=3)
        assert friday["s"] == "ok" and friday["t"][-1] == body["nextTime"]


@pytest.mark.parametrize(("params", "status", "says"), [
    ({"symbol": "SIM:NOPE/USD", "resolution": "60", "from": T2024, "to": T2024 + 3600}, 404, "NOPE"),
    ({"symbol": "NOPE:SIM/USD", "resolution": "60", "from": T2024, "to": T2024 + 3600}, 404, "provider"),
    ({"symbol": "SIM/USD", "resolution": "60", "from": T2024, "to": T2024 + 3600}, 400, "PROVIDER:SYMBOL"),
    ({"symbol": SIM, "resolution": "7", "from": T2024, "to": T2024 + 3600}, 400, "resolution"),
    ({"symbol": SIM, "resolution": "60", "from": T2024}, 400, "to"),
    ({"symbol": SIM, "resolution": "60", "to": T2024}, 400, "from"),
    ({"symbol": SIM, "resolution": "60", "from": T2024, "to": T2024}, 400, "after"),
    ({"symbol": SIM, "resolution": "60", "from": T2024 * 1000, "to": T2024 * 1000 + 1}, 400, "seconds"),
    ({"symbol": SIM, "resolution": "60", "from": "x", "to": T2024}, 400, "from"),
    ({"symbol": SIM, "resolution": "60", "to": T2024, "countback": 0}, 400, "countback"),
])
async def test_history_errors_answer_s_error_with_errmsg(
    client: TestClientProtocol, params: dict[str, Any], status: int, says: str
) -> None:
    got, body = await udf(client, "history", **params)
    assert got == status and set(body) == {"s", "errmsg"} and body["s"] == "error"
    assert says in body["errmsg"], body


async def test_symbols_errors_answer_s_error(client: TestClientProtocol) -> None:
    for symbol, status in (("SIM:NOPE", 404), ("NOPE:X", 404), ("plain", 400)):
        got, body = await udf(client, "symbols", symbol=symbol)
        assert got == status and body["s"] == "error" and body["errmsg"], (symbol, body)
    got, body = await udf(client, "symbols")
    assert got == 400 and body["s"] == "error" and "symbol" in body["errmsg"]


async def test_history_spends_the_ohlcv_budget(app_config: dict[str, Any]) -> None:
    """Issue 23 (8): /udf/history is limited in the ``ohlcv`` class, not ``default``, so it adds
    nothing to a client's /ohlcv budget."""
    from app import create_app

    app = create_app({**app_config, "RATE_LIMITS": {"ohlcv": "2/60", "default": "100/60"}})
    async with app.test_app():
        client = app.test_client()
        await ohlcv(client, timeframe="1m", limit=5)
        status, _ = await udf(client, "history", symbol=SIM, resolution="1", to=int(time.time()), countback=5)
        assert status == 200
        status, _ = await udf(client, "history", symbol=SIM, resolution="1", to=int(time.time()), countback=5)
        assert status == 429
        assert (await client.get("/api/v1/ohlcv", query_string={
            "market": "sim", "provider": "sim", "symbol": "SIM/USD"})).status_code == 429
        assert (await client.get("/api/v1/markets")).status_code == 200


# --- months (24.8: has_weekly_and_monthly is true, so 1M must be served) ------------------------
def month_bars(days: list[list[float]]) -> list[list[float]]:
    """1d bars aggregated by UTC calendar month, written out plainly for the comparison."""
    out: dict[tuple[int, int], list[float]] = {}
    for b in days:
        when = datetime.fromtimestamp(b[0] / 1000, UTC)
        key = (when.year, when.month)
        if key not in out:
            start = datetime(when.year, when.month, 1, tzinfo=UTC).timestamp() * 1000
            out[key] = [start, b[1], b[2], b[3], b[4], b[5]]
        else:
            m = out[key]
            m[2], m[3], m[4], m[5] = max(m[2], b[2]), min(m[3], b[3]), b[4], m[5] + b[5]
    return list(out.values())


async def test_monthly_history_aggregates_the_daily_bars_by_calendar_month(client: TestClientProtocol) -> None:
    jan_2023, jan_2024 = 1_672_531_200, T2024
    status, body = await udf(client, "history", symbol=SIM, resolution="1M", to=jan_2024 + 86_400,
                             **{"from": jan_2023 + 3600})  # from mid-day: January 2023 is not in
    feb_2023, feb_2024 = jan_2023 + 86_400 * 31, jan_2024 + 86_400 * 31
    days = await ohlcv(client, timeframe="1d", start=feb_2023 * 1000, end=feb_2024 * 1000, limit=5000)
    expected = month_bars(days)
    assert status == 200 and body["s"] == "ok"
    assert body["t"][0] == 1_675_209_600 and body["t"][-1] == jan_2024  # Feb 2023 .. Jan 2024
    assert len(body["t"]) == 12 and {k: body[k] for k in "tohlcv"} == columns(expected)
    status, back = await udf(client, "history", symbol=SIM, resolution="M", to=jan_2024, countback=3,
                             **{"from": jan_2024 - 86_400})
    assert status == 200 and back["t"] == [1_696_118_400, 1_698_796_800, 1_701_388_800]  # Oct-Dec 2023
    assert {k: back[k] for k in "tohlcv"} == {k: body[k][8:11] for k in "tohlcv"}


async def test_monthly_no_data_points_to_the_month_before(client: TestClientProtocol) -> None:
    status, body = await udf(client, "history", symbol=SIM, resolution="1M", to=1_000_000_000,
                             **{"from": 990_000_000})
    assert status == 200 and body == {"s": "no_data"}


async def test_symbol_info_lists_months(client: TestClientProtocol) -> None:
    _, info = await udf(client, "symbols", symbol=SIM)
    assert info["has_weekly_and_monthly"] is True and "1M" in info["supported_resolutions"]


# --- search across every exchange is bounded (24.8) -----------------------------------------------
def exchange_info_answered(emu: ExchangeEmulator) -> bool:
    """The emulator has answered every markets request it was sent (at least one)."""
    asked = emu.requests("/api/v3/exchangeInfo")
    return bool(asked) and all(r.status for r in asked)


async def test_search_of_every_exchange_answers_within_its_bound_while_one_hangs(
    emulator: ExchangeEmulator, app_config: dict[str, Any]  # noqa: F811
) -> None:
    config = emu_config(app_config, emulator, UDF_SEARCH_SECONDS=0.3, RATE_LIMITS={"default": "off"})
    emulator.inject("/api/v3/exchangeInfo", delay=1.5, times=1)  # binance slow to load its markets
    async with running_app(config) as app:
        client = app.test_client()
        started = time.perf_counter()
        status, found = await udf(client, "search", query="US")
        took = time.perf_counter() - started
        assert status == 200 and took < 1.2, took  # was the slowest exchange's time, one after another
        assert {i["exchange"] for i in found} == {"SIM"}  # binance has not answered yet
        await wait_for(lambda: exchange_info_answered(emulator), within=10)  # its fetch went on
        status, found = await udf(client, "search", query="US")
        assert status == 200 and {"SIM", "BINANCE"} <= {i["exchange"] for i in found}


class HangingMarkets:
    """MarketService's catalogue side: sim answers at once, binance never (a dead network)."""

    def __init__(self, known: list[str] | None) -> None:
        self.known = known

    def markets(self) -> list[dict[str, Any]]:
        return [{"market": "crypto", "providers": ["binance"]}, {"market": "sim", "providers": ["sim"]}]

    def providers(self, market: str) -> list[Any]:
        return [ProviderInfo("binance" if market == "crypto" else "sim", False, True, [])]

    async def symbols(self, market: str, provider: str) -> list[str]:
        if provider == "binance":
            await asyncio.sleep(3600)
        return ["SIM/USD"]

    def known_symbols(self, market: str, provider: str) -> list[str] | None:
        return self.known if provider == "binance" else None


@pytest.mark.parametrize(("known", "exchanges"), [(None, {"SIM"}), (["BTC/USD"], {"SIM", "BINANCE"})])
async def test_search_uses_the_last_list_of_an_exchange_that_does_not_answer(
    known: list[str] | None, exchanges: set[str]
) -> None:
    service = UdfService(HangingMarkets(known), None, 5000, 0.1)  # type: ignore[arg-type]
    try:
        found = await asyncio.wait_for(service.search("USD", "", "", 30), 1.0)
        assert {i["exchange"] for i in found} == exchanges
    finally:
        await service.close()
    assert not service._fetching  # the hanging fetch was cancelled at close

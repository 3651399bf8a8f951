"""GET /api/v1/ohlcv on the sim market, through the real PostgreSQL and Redis."""

from __future__ import annotations

from typing import Any

import pytest
from quart import Quart
from quart.typing import TestClientProtocol

from app_extensions.response_cache import get_response_cache
from core.timeframes import HOUR_MS, MINUTE_MS, TIMEFRAMES, now_ms, resample
from plugins.sim import sim_bar
from tests.conftest import REDIS_URL
from tests.support.helpers import delete_prefix, sim_calls

BASE = "/api/v1/ohlcv?market=sim&provider=sim&symbol=SIM/USD"
DAY = 24 * HOUR_MS
PAST = 1_700_006_400_000  # 2023-11-15 00:00 UTC, a day boundary


async def get(client: TestClientProtocol, query: str, **headers: str) -> tuple[int, Any, Any]:
    r = await client.get(BASE + query, headers=headers)
    return r.status_code, await r.get_json(), r.headers


async def flush_prefix(prefix: str, app: Quart | None = None) -> None:
    """Empty every answer cache: Redis, and ``app``'s prepared answers in process memory."""
    await delete_prefix(REDIS_URL, prefix)
    if app is not None:
        get_response_cache(app).store.clear()


async def test_latest_48_hours_equal_the_aggregation_of_sim_minutes(client: TestClientProtocol) -> None:
    status, body, headers = await get(client, "&timeframe=1h&limit=48")
    assert status == 200, body
    bars = body["bars"]
    assert len(bars) == 48
    assert [b[0] for b in bars] == sorted({b[0] for b in bars})
    assert all(b[0] % HOUR_MS == 0 for b in bars)
    assert body["partial"] is True and body["next"] is None
    assert bars[-1][0] <= now_ms() < bars[-1][0] + HOUR_MS
    for bar in bars[:-1]:  # every closed hour equals its 60 sim minutes
        minutes = [sim_bar(42, "SIM/USD", bar[0] + i * MINUTE_MS) for i in range(60)]
        want = resample(minutes, "1h")[0]
        assert bar[:5] == want[:5]
        assert bar[5] == pytest.approx(want[5])
    assert headers["X-Data-Source"] in ("provider", "database,provider")


async def test_second_request_is_served_from_cache_without_plugin_calls(
    app: Quart, client: TestClientProtocol
) -> None:
    await get(client, "&timeframe=1h&limit=48")
    calls = sim_calls(app)
    assert calls >= 1
    status, body, headers = await get(client, "&timeframe=1h&limit=48")
    assert status == 200 and len(body["bars"]) == 48
    assert headers["X-Data-Source"] == "cache"
    assert sim_calls(app) == calls


async def test_after_flushing_redis_a_stored_range_comes_from_the_database(
    app: Quart, client: TestClientProtocol, redis_prefix: str
) -> None:
    query = f"&timeframe=1h&start={PAST}&end={PAST + DAY}"
    status, first, headers = await get(client, query)
    assert status == 200 and len(first["bars"]) == 24
    assert headers["X-Data-Source"] == "provider"
    await flush_prefix(redis_prefix, app)
    calls = sim_calls(app)
    status, second, headers = await get(client, query)
    assert headers["X-Data-Source"] == "database"
    assert sim_calls(app) == calls
    assert second["bars"] == first["bars"] and second["partial"] is False
    status, third, headers = await get(client, query)
    assert headers["X-Data-Source"] == "cache" and third == second


@pytest.mark.parametrize("timeframe", list(TIMEFRAMES))
async def test_every_timeframe_pages_without_gaps_or_duplicates(
    client: TestClientProtocol, timeframe: str
) -> None:
    size = TIMEFRAMES[timeframe]
    limit = 7
    start, end = PAST, PAST + 20 * size
    seen: list[int] = []
    cursor: int | None = start
    while cursor is not None:
        status, body, _ = await get(client, f"&timeframe={timeframe}&start={cursor}&end={end}&limit={limit}")
        assert status == 200, body
        assert len(body["bars"]) <= limit
        seen.extend(b[0] for b in body["bars"])
        cursor = body["next"]
    first = -(-start // size) * size if timeframe != "1w" else None
    assert seen == sorted(set(seen))
    if first is not None:
        assert seen == list(range(first, end, size))
    else:
        assert len(seen) in (19, 20) and all((s - 4 * DAY) % size == 0 for s in seen)


async def test_iso_times_and_exclusive_end(client: TestClientProtocol) -> None:
    status, body, _ = await get(
        client, "&timeframe=1h&start=2023-11-15T00:00:00Z&end=2023-11-15T03:00:00%2B00:00"
    )
    assert status == 200
    assert [b[0] for b in body["bars"]] == [PAST, PAST + HOUR_MS, PAST + 2 * HOUR_MS]
    assert body["next"] is None


async def test_past_range_has_etag_and_if_none_match_answers_304(client: TestClientProtocol) -> None:
    query = f"&timeframe=15m&start={PAST}&end={PAST + HOUR_MS}"
    status, _body, headers = await get(client, query)
    assert status == 200 and "ETag" in headers
    r = await client.get(BASE + query, headers={"If-None-Match": headers["ETag"]})
    assert r.status_code == 304
    r = await client.get(BASE + query, headers={"If-None-Match": '"other"'})
    assert r.status_code == 200
    # If-None-Match compares weakly (RFC 9110): a weak tag of ours, a list holding it, or *.
    for value in (f'W/{headers["ETag"]}', f'"other", {headers["ETag"]}', "*"):
        r = await client.get(BASE + query, headers={"If-None-Match": value})
        assert r.status_code == 304, value


async def test_latest_bars_up_to_an_end_past_now_are_the_latest_bars(
    client: TestClientProtocol,
) -> None:
    """Without start, end in the future means up to now (as Binance's endTime): not no bars."""
    for tf, size in (("1m", MINUTE_MS), ("1h", HOUR_MS)):
        status, body, _ = await get(client, f"&timeframe={tf}&limit=3&end={now_ms() + 30 * DAY}")
        assert status == 200 and len(body["bars"]) == 3 and body["partial"] is True, body
        current = now_ms() // size * size
        assert body["bars"][-1][0] in (current, current - size)  # a bucket may close meanwhile


async def test_forming_range_has_no_etag(client: TestClientProtocol) -> None:
    _, body, headers = await get(client, "&timeframe=1m&limit=5")
    assert "ETag" not in headers and body["partial"] is True


async def test_operator_limits_are_honoured(app_config: dict[str, Any]) -> None:
    from app import create_app

    application = create_app({**app_config, "OHLCV_DEFAULT_LIMIT": 7, "OHLCV_MAX_LIMIT": 100})
    async with application.test_app():
        client = application.test_client()
        status, body, _ = await get(client, f"&timeframe=1h&start={PAST}")
        assert status == 200 and len(body["bars"]) == 7
        status, body, _ = await get(client, f"&timeframe=1h&start={PAST}&limit=101")
        assert status == 400 and body["error"]["details"] == {"limit": ["at most 100"]}
        status, body, _ = await get(client, f"&timeframe=1h&start={PAST}&limit=100")
        assert status == 200 and len(body["bars"]) == 100


async def test_default_limit_is_500(client: TestClientProtocol) -> None:
    status, body, _ = await get(client, "&timeframe=1m")
    assert status == 200 and len(body["bars"]) == 500
    assert [b[0] for b in body["bars"]] == sorted(b[0] for b in body["bars"])


ERRORS = [
    ("/api/v1/ohlcv?market=sim&provider=sim", 400, "invalid_parameter"),
    (BASE + "&timeframe=7m", 400, "invalid_parameter"),
    (BASE + "&limit=0", 400, "invalid_parameter"),
    (BASE + "&limit=5001", 400, "invalid_parameter"),
    (BASE + "&limit=abc", 400, "invalid_parameter"),
    (BASE + "&start=yesterday", 400, "invalid_parameter"),
    (BASE + "&start=2024-01-01T00:00:00", 400, "invalid_parameter"),
    (BASE + "&start=1700000000000&end=1600000000000", 400, "invalid_parameter"),
    # str.isdigit() accepts these, int() refuses them: a 400, never a 500.
    (BASE + "&start=%C2%B2", 400, "invalid_parameter"),
    (BASE + "&start=" + "9" * 5000, 400, "invalid_parameter"),
    # PostgreSQL refuses NUL in text: the schema must stop it before storage sees it.
    ("/api/v1/ohlcv?market=sim&provider=sim&symbol=SIM%00/USD", 400, "invalid_parameter"),
    ("/api/v1/ohlcv?market=sim&provider=sim&symbol=SIM/USD%0A", 400, "invalid_parameter"),
    ("/api/v1/ohlcv?market=forex&provider=sim&symbol=X", 404, "unknown_market"),
    ("/api/v1/ohlcv?market=sim&provider=nope&symbol=SIM/USD", 404, "unknown_provider"),
    ("/api/v1/ohlcv?market=sim&provider=sim&symbol=NOPE/USD", 404, "unknown_symbol"),
    ("/api/v1/providers", 400, "invalid_parameter"),
    ("/api/v1/providers?market=forex", 404, "unknown_market"),
    ("/api/v1/symbols?market=sim", 400, "invalid_parameter"),
    ("/api/v1/symbols?market=sim&provider=nope", 404, "unknown_provider"),
    ("/api/v1/symbols?market=forex&provider=sim", 404, "unknown_market"),
    ("/api/v1/ticker?market=sim&provider=sim", 400, "invalid_parameter"),
    ("/api/v1/ticker?market=sim&provider=sim&symbol=NOPE", 404, "unknown_symbol"),
    ("/api/v1/ticker?market=sim&provider=zzz&symbol=SIM/USD", 404, "unknown_provider"),
    ("/api/v1/no-such-endpoint", 404, "not_found"),
]


@pytest.mark.parametrize(("url", "status", "code"), ERRORS)
async def test_error_cases(client: TestClientProtocol, url: str, status: int, code: str) -> None:
    r = await client.get(url, headers={"X-Request-ID": "req-123"})
    body = await r.get_json()
    assert r.status_code == status
    assert body["error"]["code"] == code and body["error"]["message"]
    assert r.headers["X-Request-ID"] == "req-123"
    if code == "invalid_parameter" and "details" in body["error"]:
        assert isinstance(body["error"]["details"], dict)


async def test_catalogue_endpoints(client: TestClientProtocol) -> None:
    r = await client.get("/api/v1/markets")
    markets = {m["market"]: m for m in (await r.get_json())["markets"]}
    assert markets["sim"]["providers"] == ["sim"] and "1w" in markets["sim"]["timeframes"]
    r = await client.get("/api/v1/providers?market=sim")
    body = await r.get_json()
    assert body["providers"][0] == {"provider": "sim", "requires_credentials": False,
                                    "configured": True, "timeframes": list(TIMEFRAMES)}
    r = await client.get("/api/v1/symbols?market=sim&provider=sim")
    assert "SIM/USD" in (await r.get_json())["symbols"]
    r = await client.get("/api/v1/ticker?market=sim&provider=sim&symbol=SIM/USD")
    t = await r.get_json()
    assert t["bid"] < t["last"] < t["ask"] and abs(t["ts"] - now_ms()) < 5000
    assert r.headers["X-Request-ID"]

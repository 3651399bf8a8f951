"""GET /api/v1/ohlcv against the provider's failures and paging: shared fetches, short pages,
outages mid-paging and the 1m cache (the sim market, real PostgreSQL and Redis)."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from quart import Quart
from quart.typing import TestClientProtocol

from core.timeframes import MINUTE_MS, now_ms
from tests.blueprints.test_market import DAY, PAST, get
from tests.conftest import REDIS_URL
from tests.support.helpers import sim_calls


async def test_concurrent_identical_requests_share_one_upstream_fetch(
    app: Quart, client: TestClientProtocol
) -> None:
    import asyncio

    query = f"&timeframe=1m&start={PAST}&limit=3000"
    results = await asyncio.gather(*(get(client, query) for _ in range(6)))
    assert all(status == 200 for status, _, _ in results)
    assert all(body["bars"] == results[0][1]["bars"] for _, body, _ in results)
    assert len(results[0][1]["bars"]) == 3000
    assert sim_calls(app) == 3  # 3000 bars, 1000 per call, fetched once for all six


async def test_a_provider_answering_fewer_bars_than_asked_is_paged_not_recorded_complete(
    app: Quart, client: TestClientProtocol
) -> None:
    """A page shorter than asked in the middle of a range (OKX's history endpoint caps at 100)
    is not the end of the range: the rest is fetched, and the ledger records no false hole."""
    from app_extensions.services import get_services

    plugin = await get_services(app).markets.get_plugin("sim", "sim")
    real = plugin.fetch_ohlcv

    async def capped(symbol: str, timeframe: str, since: int, limit: int, until: Any = None) -> Any:
        return await real(symbol, timeframe, since, min(limit, 100), until)

    plugin.fetch_ohlcv = capped  # type: ignore[method-assign]
    status, body, _ = await get(client, f"&timeframe=1m&start={PAST}&limit=1000")
    assert status == 200
    assert [b[0] for b in body["bars"]] == [PAST + i * MINUTE_MS for i in range(1000)]
    r = await client.get(f"/api/v1/gaps?market=sim&provider=sim&symbol=SIM/USD&start={PAST}"
                         f"&end={PAST + 1000 * MINUTE_MS}")
    gaps = await r.get_json()
    assert gaps == {"missing": [], "verified_empty": []}


async def test_answers_holding_the_last_minutes_are_cached_briefly(
    client: TestClientProtocol, redis_prefix: str
) -> None:
    """The last two closed minutes are refetched every time (exchanges still correct them): an
    answer holding them lives CACHE_TTL_FORMING, not a day; an older one CACHE_TTL_CLOSED."""
    current = now_ms() // MINUTE_MS * MINUTE_MS
    old_end = current - 60 * MINUTE_MS
    for end in (current, old_end):
        status, body, _ = await get(client, f"&timeframe=1m&start={end - 10 * MINUTE_MS}&end={end}")
        assert status == 200 and body["partial"] is False and len(body["bars"]) == 10
    r = aioredis.from_url(REDIS_URL)
    try:
        ttls = {}
        for end in (current, old_end):
            key = f"{redis_prefix}:ans2:sim:sim:SIM/USD:1m:{end - 10 * MINUTE_MS}:{end}"
            ttls[end] = await r.ttl(key)
    finally:
        await r.aclose()
    assert 0 < ttls[current] <= 5, ttls
    assert ttls[old_end] > 3600, ttls


async def test_provider_outage_serves_stored_bars_marked_incomplete_else_503(
    app: Quart, client: TestClientProtocol
) -> None:
    from app_extensions.services import get_services
    from core.errors import NetworkPluginError

    plugin = await get_services(app).markets.get_plugin("sim", "sim")
    stored = f"&timeframe=1m&start={PAST}&limit=10"
    assert (await get(client, stored))[0] == 200  # [PAST, PAST + 10 min) is now stored

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise NetworkPluginError("sim: down")

    plugin.fetch_ohlcv = down  # type: ignore[method-assign]
    # Part stored: the stored bars, marked incomplete, with a job for the rest.
    status, body, headers = await get(client, f"&timeframe=1m&start={PAST}&limit=20")
    assert status == 200 and len(body["bars"]) == 10
    assert headers["X-Data-Incomplete"] == "true" and headers["X-Backfill-Job"]
    assert "ETag" not in headers
    # Too large for 1m paging (the native-timeframe path): the stored bars too, not a 503.
    status, body, headers = await get(client, f"&timeframe=1h&start={PAST}&limit=5000")
    assert status == 200 and len(body["bars"]) == 1 and body["bars"][0][0] == PAST
    assert headers["X-Data-Incomplete"] == "true" and headers["X-Backfill-Job"]
    # Nothing stored: 503, not an empty answer that reads as "no trades".
    for query in (f"&timeframe=1m&start={PAST + DAY}&limit=20", "&timeframe=1m&limit=1",
                  "&timeframe=1m&limit=2"):
        status, body, _ = await get(client, query)
        assert status == 503 and body["error"]["code"] == "provider_unavailable", (query, body)


async def test_provider_failing_mid_paging_keeps_the_pages_fetched_and_records_only_them(
    app: Quart, client: TestClientProtocol
) -> None:
    """The third page fails: the first two (2000 minutes) are answered, written and recorded
    complete; the rest stays missing, with a job for it; nothing is recorded complete falsely."""
    from app_extensions.services import get_services
    from core.errors import NetworkPluginError

    plugin = await get_services(app).markets.get_plugin("sim", "sim")
    real, calls = plugin.fetch_ohlcv, []

    async def flaky(symbol: str, timeframe: str, since: int, limit: int, until: Any = None) -> Any:
        calls.append(since)
        if len(calls) >= 3:
            raise NetworkPluginError("sim: down")
        return await real(symbol, timeframe, since, limit, until)

    plugin.fetch_ohlcv = flaky  # type: ignore[method-assign]
    end = PAST + 5000 * MINUTE_MS
    status, body, headers = await get(client, f"&timeframe=1m&start={PAST}&limit=5000")
    assert status == 200
    assert [b[0] for b in body["bars"]] == [PAST + i * MINUTE_MS for i in range(2000)]
    assert headers["X-Data-Incomplete"] == "true" and headers["X-Backfill-Job"]
    r = await client.get(f"/api/v1/gaps?market=sim&provider=sim&symbol=SIM/USD&start={PAST}"
                         f"&end={end}")
    assert await r.get_json() == {"missing": [[PAST + 2000 * MINUTE_MS, end]], "verified_empty": []}


async def test_fetching_two_ranges_around_a_stored_one_keeps_its_minutes_in_the_1m_cache(
    client: TestClientProtocol, redis_prefix: str
) -> None:
    """The 1m cache replaces the span of each fetch: fetching [P-10m, P) and [P+10m, P+20m) in
    one request must not drop the cached minutes of [P, P+10m) between them. P is two days ago:
    only recent 1m bars are cached (``CACHE_RECENT_SECONDS``, a week)."""
    m = MINUTE_MS
    recent = now_ms() // DAY * DAY - 2 * DAY
    assert (await get(client, f"&timeframe=1m&start={recent}&end={recent + 10 * m}"))[0] == 200
    status, body, _ = await get(client, f"&timeframe=1m&start={recent - 10 * m}&end={recent + 20 * m}")
    assert status == 200 and len(body["bars"]) == 30
    r = aioredis.from_url(REDIS_URL)
    try:
        cached = await r.zcount(f"{redis_prefix}:1m:sim:sim:SIM/USD", recent - 10 * m, recent + 19 * m)
    finally:
        await r.aclose()
    assert cached == 30

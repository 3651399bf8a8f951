"""/metrics parses with prometheus-client's parser, holds every documented family after a request of
each kind, and no label carries a raw path or other client-sent value."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from quart import Quart

from app import create_app
from app_extensions.auth import hash_key
from tests.core.test_metrics_dashboard import documented_metrics

KEY = "metrics-test-key-0123"
SECRET_PATH_TOKEN = "zq9xraw4path"
PAST = 1_700_006_400_000

#: Families documented in docs/metrics.md's table (counters without the _total suffix).
DOCUMENTED = {name.removesuffix("_total") for name in documented_metrics()}
#: Families that must carry samples after the requests below.
MUST_HAVE_SAMPLES = {
    "http_requests", "http_request_duration_seconds", "cache_requests", "provider_calls",
    "provider_call_duration_seconds", "dependency_up", "plugin_instances", "db_query_duration_seconds",
    "db_pool_connections", "db_pool_connections_in_use", "rate_limit_rejections", "auth_failures",
    "ws_connections", "ws_subscriptions", "ws_frames_sent",
}


@pytest.fixture
async def metrics_app(app_config: dict[str, Any]) -> AsyncIterator[Quart]:
    app = create_app({**app_config, "AUTH_ENABLED": True, "API_KEYS": [hash_key(KEY)],
                      "RATE_LIMITS": {"default": "12/60"}})
    async with app.test_app():
        yield app


async def scrape(app: Quart) -> dict[str, list[Sample]]:
    r = await app.test_client().get("/metrics")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    text = await r.get_data(as_text=True)
    assert SECRET_PATH_TOKEN not in text
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


async def test_every_documented_family_after_a_request_of_each_kind(metrics_app: Quart) -> None:
    client = metrics_app.test_client()
    auth = {"X-API-Key": KEY}
    sim = "market=sim&provider=sim&symbol=SIM/USD"
    answers = [
        await client.get(f"/api/v1/ohlcv?{sim}&timeframe=1h&start={PAST}&end={PAST + 6 * 3_600_000}",
                         headers=auth),
        await client.get(f"/api/v1/ticker?{sim}", headers=auth),
        await client.get("/api/v1/symbols?market=sim&provider=sim", headers=auth),
        await client.get(f"/api/v1/gaps?{sim}&start={PAST}&end={PAST + 60_000}", headers=auth),
        await client.get(f"/api/v1/{SECRET_PATH_TOKEN}/x?a={SECRET_PATH_TOKEN}", headers=auth),
        await client.get("/api/v1/markets"),  # 401
        await client.get("/health"),
        await client.get("/health/ready"),
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 404, 401, 200, 200]
    async with client.websocket("/api/v1/ws", headers=auth) as ws:
        await ws.send(json.dumps({"op": "subscribe", "market": "sim", "provider": "sim", "symbol": "SIM/USD",
                                  "history": 2, "id": "m"}))
        assert json.loads(await ws.receive())["type"] == "subscribed"
        assert json.loads(await ws.receive())["type"] == "snapshot"
    while (await client.get("/api/v1/markets", headers=auth)).status_code != 429:
        pass
    families = await scrape(metrics_app)
    missing = DOCUMENTED - set(families)
    assert not missing, f"documented families missing from /metrics: {missing}"
    empty = {name for name in MUST_HAVE_SAMPLES if not families[name]}
    assert not empty, f"families without samples: {empty}"

    def value(family: str, sample: str, **labels: str) -> float:
        return sum(s.value for s in families[family]
                   if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))

    assert value("http_requests", "http_requests_total", route="/api/v1/ohlcv", status="200") >= 1
    assert value("http_requests", "http_requests_total", route="unmatched", status="404") >= 1
    assert value("http_requests", "http_requests_total", route="/api/v1/markets", status="429") >= 1
    assert value("rate_limit_rejections", "rate_limit_rejections_total", route_class="default") >= 1
    assert value("auth_failures", "auth_failures_total", reason="missing") >= 1
    assert value("provider_calls", "provider_calls_total", provider="sim", method="fetch_ohlcv",
                 outcome="ok") >= 1
    assert value("db_query_duration_seconds", "db_query_duration_seconds_count", query="select_bars") >= 1
    assert value("dependency_up", "dependency_up", name="database") == 1
    assert value("db_pool_connections", "db_pool_connections") >= 1


async def test_no_label_carries_a_raw_path_or_client_value(metrics_app: Quart) -> None:
    client = metrics_app.test_client()
    auth = {"X-API-Key": KEY}
    for path in (f"/{SECRET_PATH_TOKEN}", f"/api/v1/ohlcv/{SECRET_PATH_TOKEN}",
                 f"/api/v1/symbols?market={SECRET_PATH_TOKEN}&provider={SECRET_PATH_TOKEN}",
                 f"/api/v1/backfill/{SECRET_PATH_TOKEN}"):
        await client.get(path, headers={**auth, "X-Request-ID": SECRET_PATH_TOKEN})
    families = await scrape(metrics_app)
    routes = {rule.rule for rule in metrics_app.url_map.iter_rules()} | {"unmatched"}
    for samples in families.values():
        for sample in samples:
            for label, val in sample.labels.items():
                assert SECRET_PATH_TOKEN not in val
                if label == "route":
                    assert val in routes, f"route label {val!r} is not a route template"


async def test_candle_lag_is_set_by_the_poller_and_dropped_with_it(app_config: dict[str, Any]) -> None:
    import asyncio

    from prometheus_client import REGISTRY

    from tests.support.ws import WS_TEST_CONFIG, recv_until, wait_for

    def lag(timeframe: str) -> float | None:
        return REGISTRY.get_sample_value("candle_lag_seconds", {"provider": "sim", "timeframe": timeframe})

    app = create_app({**app_config, **WS_TEST_CONFIG, "WS_UNSUBSCRIBE_GRACE_SECONDS": 0.05})
    async with app.test_app():
        async with app.test_client().websocket("/api/v1/ws") as ws:
            await ws.send(json.dumps({"op": "subscribe", "market": "sim", "provider": "sim",
                                      "symbol": "SIM/USD", "timeframe": "5m", "history": 0}))
            await recv_until(ws, lambda f: f["type"] == "bar", within=10)
            await wait_for(lambda: lag("5m") is not None, within=5)  # set right after the publish
            value = lag("5m")
            # The sim market's forming bar is current: the data is at most a poll interval old.
            assert value is not None and 0 <= value < 5
            await ws.send(json.dumps({"op": "unsubscribe", "channel": "sim:sim:SIM/USD:5m"}))
            await asyncio.sleep(0)
        await wait_for(lambda: lag("5m") is None, within=10)

"""``GET /api/v1/channels``: the live channels of the whole cluster, from any instance."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from quart import Quart

from app import create_app
from app_extensions.services import get_services
from core.errors import NetworkPluginError
from tests.support.ws import WS_TEST_CONFIG, wait_for
from tests.support.ws import collecting as subscribed

SUB = {"op": "subscribe", "market": "sim", "provider": "sim", "symbol": "SIM/USD", "history": 1}
CHANNEL = "sim:sim:SIM/USD:1m"


async def channels(app: Quart) -> list[dict[str, Any]]:
    response = await app.test_client().get("/api/v1/channels")
    assert response.status_code == 200
    body: dict[str, Any] = await response.get_json()
    return list(body["channels"])


async def test_channels_of_the_whole_cluster_from_either_instance(app_config: dict[str, Any]) -> None:
    cfg = {**app_config, **WS_TEST_CONFIG, "ENABLED_MARKETS": "sim"}
    a, b = create_app(cfg), create_app(cfg)
    async with a.test_app(), b.test_app():
        assert await channels(a) == []
        async with subscribed(a, SUB), subscribed(a, {**SUB, "timeframe": "5m"}), subscribed(b, SUB):
            async def both_seen() -> bool:
                rows = {r["channel"]: r for r in await channels(b)}
                one = rows.get(CHANNEL)
                return (one is not None and one["subscribers"] == 2 and one["last_bar_ts"] is not None
                        and rows.get("sim:sim:SIM/USD:5m", {}).get("subscribers") == 1)
            await wait_for(both_seen, within=10)
            for app in (a, b):
                row = {r["channel"]: r for r in await channels(app)}[CHANNEL]
                assert row["feed"] == "poll" and row["state"] == "live"
                assert isinstance(row["lag_ms"], int) and 0 <= row["lag_ms"] < 5000
                assert row["last_bar_ts"] % 60_000 == 0


async def test_a_failing_channel_is_stale_with_a_growing_lag(
    app_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app({**app_config, **WS_TEST_CONFIG, "ENABLED_MARKETS": "sim"})
    async with app.test_app():
        plugin = await get_services(app).markets.get_plugin("sim", "sim")
        async with subscribed(app, SUB) as frames:
            await wait_for(lambda: any(f["type"] == "bar" for f in frames))

            async def down(*args: Any, **kwargs: Any) -> Any:
                raise NetworkPluginError("emulated exchange outage")
            monkeypatch.setattr(plugin, "fetch_ohlcv", down)
            await wait_for(lambda: any(f["type"] == "status" for f in frames))
            first = (await channels(app))[0]
            await asyncio.sleep(0.3)
            later = (await channels(app))[0]
            assert first["state"] == later["state"] == "stale"
            assert later["lag_ms"] > first["lag_ms"]

"""An unconfigured provider (Alpaca without keys) is refused at once, naming the missing
settings, without a network call (issue 14, fault 6)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.backfill import running_app
from tests.support.exchange_emulator import ExchangeEmulator
from tests.support.exchange_emulator.fixtures import emulator  # noqa: F401

QUERY = "market=stocks&provider=alpaca"


@pytest.mark.parametrize("path", [
    f"/api/v1/ohlcv?{QUERY}&symbol=AAPL&timeframe=1m&limit=10",
    f"/api/v1/symbols?{QUERY}",
    f"/api/v1/ticker?{QUERY}&symbol=AAPL",
])
async def test_unconfigured_alpaca_answers_at_once_naming_its_settings(
    emulator: ExchangeEmulator, app_config: dict[str, Any], path: str  # noqa: F811
) -> None:
    config = {**app_config, "PROVIDER_URLS": {"alpaca": emulator.url}, "ALPACA_API_KEY_ID": "",
              "ALPACA_API_SECRET_KEY": ""}
    async with running_app(config) as app:
        client = app.test_client()
        providers = await (await client.get("/api/v1/providers?market=stocks")).get_json()
        assert providers["providers"][0]["configured"] is False
        resp = await client.get(path)
        body = await resp.get_json()
        assert resp.status_code == 503, body
        assert body["error"]["code"] == "dependency_unavailable"
        assert "ALPACA_API_KEY_ID" in body["error"]["message"]
        assert "ALPACA_API_SECRET_KEY" in body["error"]["message"]
        assert resp.headers["Retry-After"]
    assert emulator.calls() == 0  # no network call


async def test_unconfigured_alpaca_over_websocket_is_an_error_frame(
    emulator: ExchangeEmulator, app_config: dict[str, Any]  # noqa: F811
) -> None:
    config = {**app_config, "PROVIDER_URLS": {"alpaca": emulator.url}, "ALPACA_API_KEY_ID": ""}
    async with running_app(config) as app, app.test_client().websocket("/api/v1/ws") as ws:
        await ws.send(json.dumps({"op": "subscribe", "market": "stocks", "provider": "alpaca",
                                  "symbol": "AAPL", "timeframe": "1m", "id": "c1"}))
        frames = []
        for _ in range(3):
            frame = json.loads(await ws.receive())
            frames.append(frame)
            if frame["type"] == "error":
                break
        assert frames[-1]["type"] == "error", frames
        assert frames[-1]["code"] == "dependency_unavailable"
        assert "ALPACA_API_KEY_ID" in frames[-1]["message"]
    assert emulator.calls() == 0

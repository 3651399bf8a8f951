"""One error, one shape, whichever endpoint says it (24.19)."""

from __future__ import annotations

from typing import Any

import pytest
from quart.typing import TestClientProtocol

from app import create_app
from core.errors import NetworkPluginError
from services.upstream.breaker import BreakerSettings, CircuitBreaker, ProviderCircuitOpen

T0 = 1_704_067_200_000


async def test_unknown_symbol_has_the_same_details_on_ohlcv_and_backfill(client: TestClientProtocol) -> None:
    ohlcv = await client.get("/api/v1/ohlcv", query_string={
        "market": "sim", "provider": "sim", "symbol": "NOPE/USD", "start": T0, "end": T0 + 3_600_000})
    backfill = await client.post("/api/v1/backfill", json={
        "market": "sim", "provider": "sim", "symbol": "NOPE/USD", "start": T0, "end": T0 + 3_600_000})
    a, b = (await ohlcv.get_json())["error"], (await backfill.get_json())["error"]
    assert ohlcv.status_code == backfill.status_code == 404
    assert a["code"] == b["code"] == "unknown_symbol"
    assert a["details"] == b["details"] == {"symbol": ["unknown on sim"]}


async def test_the_breaker_open_503_names_its_provider() -> None:
    breaker = CircuitBreaker(BreakerSettings(failure_threshold=1, open_seconds=30.0))  # in memory
    with pytest.raises(NetworkPluginError):
        async with breaker.guard("binance"):
            raise NetworkPluginError("binance: unreachable", details={"provider": "binance"})
    with pytest.raises(ProviderCircuitOpen) as info:
        async with breaker.guard("binance"):
            pass
    body = info.value.to_dict()["error"]
    assert body["code"] == "provider_unavailable" and body["details"]["provider"] == "binance"


async def test_the_429_message_names_its_window(app_config: dict[str, Any]) -> None:
    app = create_app({**app_config, "RATE_LIMITS": {"default": "1/30"}})
    async with app.test_app():
        client = app.test_client()
        assert (await client.get("/api/v1/markets")).status_code == 200
        r = await client.get("/api/v1/markets")
        message = (await r.get_json())["error"]["message"]
        assert r.status_code == 429 and "1 requests per 30 s (default)" in message, message

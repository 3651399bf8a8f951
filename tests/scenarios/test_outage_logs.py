"""Logs stay readable through an outage: a dependency going down or coming back is logged once,
not once per request (with Redis and PostgreSQL down each request used to log five warnings)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from quart import Quart

from tests.support import tcp_proxy
from tests.support.helpers import serving
from tests.support.tcp_proxy import TcpProxy, proxied_config

PAST = 1_700_006_400_000
Q = "/api/v1/ohlcv?market=sim&provider=sim&symbol=SIM/USD&timeframe=1h&limit=6&start="


proxies = tcp_proxy.proxies


@pytest.fixture
async def proxied_app(app_config: dict[str, Any], proxies: dict[str, TcpProxy]) -> AsyncIterator[Quart]:
    config = proxied_config(app_config, proxies, RATE_LIMIT_ENABLED=False, WARMUP_ENABLED=False)
    async with serving(config) as application:
        yield application


def lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno == level]


async def test_an_outage_of_redis_and_postgres_is_logged_once_each_way(
    proxied_app: Quart, proxies: dict[str, TcpProxy], caplog: pytest.LogCaptureFixture
) -> None:
    client = proxied_app.test_client()
    assert (await client.get(Q + str(PAST))).status_code == 200
    proxies["redis"].cut()
    proxies["pg"].cut()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        for i in range(6):
            r = await client.get(Q + str(PAST + (i + 1) * 86_400_000))  # new ranges: no cached answer
            assert r.status_code == 200
            await asyncio.sleep(0.15)  # past DEPENDENCY_RETRY_AFTER: each request probes again
    warnings = lines(caplog, logging.WARNING)
    assert len([w for w in warnings if "Redis unavailable" in w]) == 1, warnings
    assert len([w for w in warnings if "PostgreSQL unavailable" in w]) == 1, warnings
    ours = [w for w in warnings if w.startswith(("services.", "app_extensions.", "blueprints."))]
    assert len(ours) == len({w.split(":")[0] for w in ours}) <= 3, ours  # once each: not per request
    proxies["redis"].restore()
    proxies["pg"].restore()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        for i in range(4):
            assert (await client.get(Q + str(PAST + (i + 10) * 86_400_000))).status_code == 200
            await asyncio.sleep(0.15)
    infos = lines(caplog, logging.INFO)
    assert len([i for i in infos if "Redis available again" in i]) == 1, infos
    assert len([i for i in infos if "PostgreSQL available again" in i]) == 1, infos
    assert lines(caplog, logging.WARNING) == []

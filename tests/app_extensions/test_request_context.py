"""app_extensions/request_context.py: JSON log lines, logger levels and the access log."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from quart import Quart

from app import create_app
from app_extensions.request_context import JsonFormatter, configure_logging

BASE = {"LOG_FORMAT": "text", "LOG_LEVEL": "DEBUG"}


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure_logging reconfigures the process' loggers: put back what pytest had."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    saved = {name: logging.getLogger(name).level for name in ("ccxt", "access", "redis", "hypercorn.access")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in saved.items():
        logging.getLogger(name).setLevel(lvl)


def test_json_ts_is_iso_8601_utc_with_milliseconds() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    record.created = 1_704_067_200.1234  # 2024-01-01T00:00:00.123Z
    entry = json.loads(JsonFormatter().format(record))
    assert entry["ts"] == "2024-01-01T00:00:00.123Z"
    record.created = 1_704_067_201.0
    assert json.loads(JsonFormatter().format(record))["ts"] == "2024-01-01T00:00:01.000Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"])


def test_ccxt_stays_quiet_at_debug_unless_asked() -> None:
    configure_logging(dict(BASE))
    assert logging.getLogger().getEffectiveLevel() == logging.DEBUG
    assert not logging.getLogger("ccxt.base.exchange").isEnabledFor(logging.DEBUG)
    configure_logging({**BASE, "LOG_LEVELS": {"ccxt": "debug"}})
    assert logging.getLogger("ccxt.base.exchange").isEnabledFor(logging.DEBUG)


@pytest.fixture(params=[False, True], ids=["off", "on"])
async def logged_app(request: pytest.FixtureRequest, app_config: dict[str, Any]) -> AsyncIterator[Quart]:
    """Made before the test's log capture starts (create_app configures logging)."""
    app = create_app({**app_config, "ACCESS_LOG": request.param})
    async with app.test_app():
        yield app


async def test_access_log_writes_one_line_per_request_when_on(
    logged_app: Quart, caplog: pytest.LogCaptureFixture
) -> None:
    lines = 1 if logged_app.config["ACCESS_LOG"] else 0
    with caplog.at_level(logging.INFO, logger="access"):
        r = await logged_app.test_client().get("/api/v1/markets?api_key=secret-key&x=1")
    logged = [rec for rec in caplog.records if rec.name == "access"]
    assert r.status_code == 200 and len(logged) == lines
    if logged:
        line = logged[0].getMessage()
        assert '"GET /api/v1/markets?api_key=***&x=1" 200 ' in line and line.endswith(" ms"), line
        assert "secret-key" not in line
        assert logged[0].request_id == r.headers["X-Request-ID"]  # type: ignore[attr-defined]

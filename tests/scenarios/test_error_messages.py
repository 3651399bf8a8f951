"""Error messages and codes say what is wrong (issue 14's papercuts), and times in seconds are
refused wherever a time is accepted: REST ``/ohlcv``, ``/gaps``, ``POST /backfill``, WebSocket
``since`` and the CLI."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from quart import Quart
from quart.typing import TestClientProtocol

from app import create_app
from core.times import RANGE_TEXT

SERIES = "market=sim&provider=sim&symbol=SIM/USD"
T0 = 1_704_067_200_000  # 2024-01-01 in ms
T0_SECONDS = 1_704_067_200


async def _error(client: TestClientProtocol, url: str) -> tuple[int, dict[str, Any]]:
    r = await client.get(url)
    return r.status_code, (await r.get_json())["error"]


@pytest.mark.parametrize("url", [
    f"/api/v1/ohlcv?{SERIES}&start={T0_SECONDS}",
    f"/api/v1/ohlcv?{SERIES}&end={T0_SECONDS}",
    f"/api/v1/gaps?{SERIES}&start={T0_SECONDS}&end={T0}",
])
async def test_times_in_seconds_are_refused_with_a_message_saying_so(
    client: TestClientProtocol, url: str
) -> None:
    status, error = await _error(client, url)
    assert status == 400 and error["code"] == "invalid_parameter"
    assert "looks like seconds" in error["message"]
    assert any("looks like seconds" in m for msgs in error["details"].values() for m in msgs)


async def test_post_backfill_refuses_seconds(client: TestClientProtocol) -> None:
    r = await client.post("/api/v1/backfill", json={
        "market": "sim", "provider": "sim", "symbol": "SIM/USD", "start": T0_SECONDS, "end": T0})
    assert r.status_code == 400
    assert (await r.get_json())["error"]["details"]["start"] == [
        "looks like seconds since the epoch (before 1973 in milliseconds); send milliseconds,"
        " i.e. seconds x 1000"]


async def test_websocket_since_in_seconds_gets_an_error_frame(app: Quart) -> None:
    async with app.test_client().websocket("/api/v1/ws") as ws:
        await ws.send(json.dumps({"op": "subscribe", "market": "sim", "provider": "sim",
                                  "symbol": "SIM/USD", "since": T0_SECONDS, "id": "s1"}))
        frame = json.loads(await ws.receive())
    assert frame["type"] == "error" and frame["id"] == "s1"
    assert frame["code"] == "invalid_parameter" and "looks like seconds" in frame["message"]


@pytest.mark.parametrize("value", ["1e20", "99999999999999999999999999", "-5", "3000-01-02T00:00:00Z",
                                   "1970-01-02T00:00:00Z"])
async def test_out_of_range_says_the_range_and_not_the_wrong_thing(
    client: TestClientProtocol, value: str
) -> None:
    status, error = await _error(client, f"/api/v1/ohlcv?{SERIES}&start={value}")
    assert status == 400
    assert error["message"] == f"start: out of range: must be {RANGE_TEXT}"
    assert "must be integer milliseconds" not in json.dumps(error)


@pytest.mark.parametrize(("value", "said"), [
    ("1704067200000.5", "whole milliseconds"), ("2024-01-01", "must carry a zone"),
    ("2024-01-01T00:00", "must carry a zone"), ("soon", "must be integer milliseconds"),
])
async def test_other_bad_times_say_what_is_wrong(client: TestClientProtocol, value: str, said: str) -> None:
    status, error = await _error(client, f"/api/v1/ohlcv?{SERIES}&start={value}")
    assert status == 400 and said in error["message"]


async def test_integral_numbers_in_other_notations_are_times(client: TestClientProtocol) -> None:
    r = await client.get(f"/api/v1/ohlcv?{SERIES}&timeframe=1h&start=1.7040672e12&limit=1")
    assert r.status_code == 200 and (await r.get_json())["bars"][0][0] == T0


async def test_405_is_method_not_allowed_with_allow(client: TestClientProtocol) -> None:
    r = await client.delete("/api/v1/ohlcv")
    assert r.status_code == 405 and r.headers["Allow"] == "GET, HEAD, OPTIONS"
    error = (await r.get_json())["error"]
    assert error["code"] == "method_not_allowed" and "GET" in error["message"]
    r = await client.put("/api/v1/backfill")
    assert r.status_code == 405 and set(r.headers["Allow"].split(", ")) >= {"GET", "POST"}


async def test_413_is_payload_too_large(app_config: dict[str, Any]) -> None:
    app = create_app({**app_config, "MAX_BODY_BYTES": 1024})
    async with app.test_app():
        r = await app.test_client().post("/api/v1/backfill", data="x" * 4096,
                                         headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    error = (await r.get_json())["error"]
    assert error["code"] == "payload_too_large" and "1024 bytes" in error["message"]


MARK = "ZqX"  # in every bad value below: never echoed in place of a message


@pytest.mark.parametrize("url", [
    f"/api/v1/providers?market={MARK}",
    f"/api/v1/symbols?market={MARK}&provider=sim",
    f"/api/v1/ohlcv?market=sim&provider=sim&symbol=SIM/USD&timeframe={MARK}",
    f"/api/v1/ohlcv?market=sim&provider=sim&symbol=SIM/USD&limit={MARK}",
    f"/api/v1/ohlcv?market=sim&provider=sim&symbol=SIM/USD&start={MARK}",
    f"/api/v1/gaps?market={MARK}&provider=sim&symbol=SIM/USD&start={T0}&end={T0 + 60_000}",
    f"/api/v1/backfill?status={MARK}",
])
async def test_details_hold_messages_not_the_bad_value(client: TestClientProtocol, url: str) -> None:
    r = await client.get(url)
    assert 400 <= r.status_code < 500
    details = (await r.get_json())["error"]["details"]
    assert details and MARK not in json.dumps(details), details


async def _raw_get(app: Quart, path: str, query: str, headers: list[tuple[bytes, bytes]]
                   ) -> tuple[int, dict[bytes, bytes]]:
    """One GET through the app's ASGI interface: the headers as sent to the server (Quart's test
    client rebuilds a Response, which adds a default content type to any answer lacking one)."""
    sent: dict[str, Any] = {}
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
             "query_string": query.encode(), "headers": [(b"host", b"localhost"), *headers],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "extensions": {}}

    requested, answered = asyncio.Event(), asyncio.Event()

    async def receive() -> dict[str, Any]:
        if not requested.is_set():
            requested.set()
            return {"type": "http.request", "body": b"", "more_body": False}
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            sent.update(status=message["status"], headers=dict(message["headers"]))
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            answered.set()

    await asyncio.wait_for(app(scope, receive, send), 10)  # type: ignore[arg-type]
    return sent["status"], sent["headers"]


async def test_not_modified_has_no_html_content_type(app: Quart) -> None:
    query = f"{SERIES}&timeframe=1h&start={T0}&end={T0 + 3_600_000 * 3}"
    status, headers = await _raw_get(app, "/api/v1/ohlcv", query, [])
    assert status == 200 and headers[b"content-type"] == b"application/json"
    status, headers = await _raw_get(app, "/api/v1/ohlcv", query, [(b"if-none-match", headers[b"etag"])])
    assert status == 304 and b"content-type" not in headers and headers[b"etag"]


def test_zone_less_times_are_refused_by_the_cli_as_by_rest(app_config: dict[str, Any]) -> None:
    runner = create_app(app_config).test_cli_runner()
    for value in ("2024-01-01", "2024-01-01T00:00"):
        out = runner.invoke(args=["gaps", "--market", "sim", "--provider", "sim", "--symbol",
                                  "SIM/USD", "--start", value, "--end", "2024-01-02T00:00:00Z"])
        assert out.exit_code == 2 and "must carry a zone" in out.output
    out = runner.invoke(args=["gaps", "--market", "sim", "--provider", "sim", "--symbol", "SIM/USD",
                              "--start", str(T0_SECONDS), "--end", "2024-01-02T00:00:00Z"])
    assert out.exit_code == 2 and "looks like seconds" in out.output

"""Hostile REST input that schemathesis does not generate: odd bodies, ids, query strings."""

from __future__ import annotations

import pytest
from quart.typing import TestClientProtocol

JSON = {"Content-Type": "application/json"}


_NOT_UTF8 = b"\xff\xfe\x00garbage"


@pytest.mark.parametrize("body", [_NOT_UTF8, b"", b"null", b"[1, 2]", b'{"market": ' + b"1" * 5000])
async def test_bad_bodies_are_400_not_500(client: TestClientProtocol, body: bytes) -> None:
    r = await client.post("/api/v1/backfill", data=body, headers=JSON)
    assert r.status_code == 400, await r.get_data()
    assert (await r.get_json())["error"]["code"] in ("invalid_json", "invalid_parameter")


async def test_deeply_nested_body_is_invalid_json(client: TestClientProtocol) -> None:
    r = await client.post("/api/v1/backfill", data="[" * 30_000 + "]" * 30_000, headers=JSON)
    assert r.status_code == 400
    assert (await r.get_json())["error"]["code"] == "invalid_json"


async def test_insane_request_ids_are_replaced(client: TestClientProtocol) -> None:
    for sent in ("a" * 500, "x\u2028y", "<script>", ""):
        r = await client.get("/health", headers={"X-Request-ID": sent})
        rid = r.headers["X-Request-ID"]
        assert rid != sent and len(rid) == 32 and rid.isalnum()


async def test_long_and_repeated_query_parameters(client: TestClientProtocol) -> None:
    long = "x" * 10_000
    r = await client.get(f"/api/v1/symbols?market={long}&provider={long}")
    assert r.status_code == 400
    r = await client.get("/api/v1/ohlcv?market=sim&market=crypto&provider=sim&symbol=SIM/USD&limit=1")
    assert r.status_code in (200, 400)


async def test_unknown_methods_answer_the_error_shape(client: TestClientProtocol) -> None:
    r = await client.delete("/api/v1/ohlcv")
    assert r.status_code == 405
    assert "error" in await r.get_json()

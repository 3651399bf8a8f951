"""The OpenAPI document states the constraints the handlers enforce (24.26), so a generator such as
schemathesis builds requests that reach the handlers instead of mostly refused ones."""

from __future__ import annotations

from typing import Any

from quart import Quart

from blueprints.openapi import OPERATIONS


async def get_doc(app: Quart) -> dict[str, Any]:
    r = await app.test_client().get("/api/v1/openapi.json")
    assert r.status_code == 200
    doc: dict[str, Any] = await r.get_json()
    return doc


async def test_market_and_provider_list_what_this_server_serves(app: Quart) -> None:
    doc = await get_doc(app)
    markets = (await (await app.test_client().get("/api/v1/markets")).get_json())["markets"]
    expected = {"market": sorted(m["market"] for m in markets),
                "provider": sorted({p for m in markets for p in m["providers"]})}
    seen = 0
    for operations in doc["paths"].values():
        for operation in operations.values():
            for param in operation["parameters"]:
                if param["in"] == "query" and param["name"] in expected:
                    assert param["schema"]["enum"] == expected[param["name"]], param
                    seen += 1
    assert seen >= 9  # /providers, /symbols, /ohlcv, /ticker, /gaps, ...


async def test_the_schemas_own_examples_make_a_valid_request(app: Quart) -> None:
    """What a generator's example phase sends (each parameter's schema example, else its own): the
    same example for start and end was refused, end must be after start."""
    doc = await get_doc(app)
    by_key = {(op.path, op.method): op for op in OPERATIONS}
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            op = by_key[(path, method)]
            if op.query is None:
                continue
            query = {p["name"]: p["schema"].get("example", p.get("example")) for p in operation["parameters"]
                     if p["in"] == "query" and ("example" in p["schema"] or "example" in p)}
            op.query().load(query)  # raises ValidationError naming the field


async def test_gaps_says_how_far_end_may_be_from_start(app: Quart) -> None:
    doc = await get_doc(app)
    end = next(p for p in doc["paths"]["/gaps"]["get"]["parameters"] if p["name"] == "end")
    assert "after start" in end["description"] and "3660" in end["description"]
    client = app.test_client()
    params = {p["name"]: p["schema"].get("example", p.get("example"))
              for p in doc["paths"]["/gaps"]["get"]["parameters"]}
    assert (await client.get("/api/v1/gaps", query_string=params)).status_code == 200

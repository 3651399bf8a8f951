"""GET /api/v1/openapi.json documents every REST endpoint from the marshmallow schemas; the docs page
renders it from files served here."""

from __future__ import annotations

import re
from typing import Any

from quart import Quart

from app import create_app
from app_extensions.auth import hash_key
from blueprints.openapi import OPERATIONS

#: Registered routes that are not REST operations of the contract.
NOT_REST = {"/api/v1/docs", "/api/v1/docs/api.md", "/api/v1/ws"}


async def get_doc(app: Quart) -> dict[str, Any]:
    r = await app.test_client().get("/api/v1/openapi.json")
    assert r.status_code == 200
    doc: dict[str, Any] = await r.get_json()
    return doc


async def test_every_registered_rest_route_is_documented(app: Quart) -> None:
    doc = await get_doc(app)
    assert doc["openapi"].startswith("3.")
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/") or rule.rule in NOT_REST or rule.websocket:
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule.removeprefix("/api/v1"))
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            assert method.lower() in doc["paths"].get(path, {}), f"{method} {rule.rule} is not documented"
    assert {"/markets", "/providers", "/symbols", "/ohlcv", "/ticker", "/openapi.json"} <= set(doc["paths"])
    assert {op.path for op in OPERATIONS} >= set(doc["paths"])


async def test_parameters_come_from_the_schemas(app: Quart) -> None:
    doc = await get_doc(app)
    params = {p["name"]: p for p in doc["paths"]["/ohlcv"]["get"]["parameters"]}
    assert set(params) == {"market", "provider", "symbol", "timeframe", "start", "end", "limit"}
    assert all(params[n]["required"] for n in ("market", "provider", "symbol"))
    assert not params["start"]["required"] and not params["end"]["required"]
    assert params["timeframe"]["schema"]["default"] == "1m"
    assert "1w" in params["timeframe"]["schema"]["enum"]
    assert params["limit"]["schema"]["maximum"] == 5000 and params["limit"]["schema"]["default"] == 500
    kinds = {alt["type"] for alt in params["start"]["schema"]["oneOf"]}
    assert kinds == {"integer", "string"}
    assert params["market"]["example"] == "sim"


async def test_answers_and_errors_are_described(app: Quart) -> None:
    doc = await get_doc(app)
    schemas = doc["components"]["schemas"]
    ohlcv = doc["paths"]["/ohlcv"]["get"]["responses"]
    assert {"200", "304", "400", "401", "404", "429", "500", "502", "503"} <= set(ohlcv)
    ok_ref = ohlcv["200"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    assert set(schemas[ok_ref]["required"]) == {"market", "provider", "symbol", "timeframe", "bars",
                                                "partial", "next"}
    error_ref = ohlcv["400"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    assert schemas[error_ref]["required"] == ["error"]
    assert "Retry-After" in ohlcv["429"]["headers"] and "X-RateLimit-Remaining" in ohlcv["429"]["headers"]
    assert "X-Request-ID" in ohlcv["200"]["headers"]
    if "/backfill" in doc["paths"]:
        post = doc["paths"]["/backfill"]["post"]
        assert "202" in post["responses"]
        body_ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
        assert set(schemas[body_ref]["required"]) == {"market", "provider", "symbol", "start", "end"}
        assert doc["paths"]["/gaps"]["get"]["responses"]["200"]


async def test_security_is_documented_when_auth_is_on(app_config: dict[str, Any]) -> None:
    app = create_app({**app_config, "AUTH_ENABLED": True, "API_KEYS": [hash_key("x" * 20)]})
    async with app.test_app():
        doc = await get_doc(app)  # the document itself stays open
    assert doc["components"]["securitySchemes"]["ApiKey"] == {"type": "apiKey", "in": "header",
                                                              "name": "X-API-Key"}
    assert doc["paths"]["/ohlcv"]["get"]["security"] == [{"ApiKey": []}]
    assert "security" not in doc["paths"]["/openapi.json"]["get"]


async def test_docs_page_is_served_locally_without_a_cdn(app: Quart) -> None:
    client = app.test_client()
    page = await client.get("/api/v1/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = await page.get_data(as_text=True)
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources and not [s for s in sources if "//" in s], sources
    scripts = re.findall(r'<script src="([^"]+)"', html)
    assert "/assets/vendor/swagger-ui-bundle.js" in scripts and "/assets/docs.js" in scripts
    for script in scripts:
        answer = await client.get(script)
        assert answer.status_code == 200 and "javascript" in (answer.mimetype or ""), script
    init = await (await client.get("/assets/docs.js")).get_data(as_text=True)
    assert "/api/v1/openapi.json" in init and not re.search(r"https?://", init)
    assert "validatorUrl: null" in init  # the validator badge would call out to swagger.io


async def test_operations_are_grouped_by_tag_and_the_reference_they_name_is_served(app: Quart) -> None:
    doc = await get_doc(app)
    tags = {op["tags"][0] for ops in doc["paths"].values() for op in ops.values()}
    assert all(len(op.get("tags", [])) == 1 for ops in doc["paths"].values() for op in ops.values())
    assert {"market", "backfill", "credentials", "spec"} <= tags and "default" not in tags
    assert [t["name"] for t in doc["tags"]][:2] == ["market", "backfill"] and {t["name"] for t in doc["tags"]} == tags
    assert doc["paths"]["/ohlcv"]["get"]["tags"] == ["market"]
    assert doc["paths"]["/gaps"]["get"]["tags"] == ["backfill"]
    # The description links the reference, and the link works (from the docs viewer's origin).
    link = re.search(r"\[docs/api.md\]\(([^)]+)\)", doc["info"]["description"])
    assert link and link.group(1) == "/api/v1/docs/api.md"
    client = app.test_client()
    viewer = await (await client.get("/api/v1/docs")).get_data(as_text=True)
    assert 'href="/api/v1/docs/api.md"' in viewer
    reference = await client.get(link.group(1))
    assert reference.status_code == 200 and reference.mimetype == "text/plain"
    assert (await reference.get_data(as_text=True)).startswith("# ")


async def test_every_operation_carries_examples_that_its_schemas_accept(app: Quart) -> None:
    doc = await get_doc(app)
    by_key = {(op.path, op.method): op for op in OPERATIONS}
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            op = by_key[(path, method)]
            ok = operation["responses"][str(op.status)]
            if op.answer is not None:
                content = ok["content"]["application/json"]
                assert "example" in content, f"{method} {path}: add an answer to blueprints/openapi_examples.py"
                example = content["example"]
                op.answer().load(example)  # raises on a field the answer does not have, or a wrong type
            for param in operation["parameters"]:
                if param["in"] == "path" or param.get("required"):
                    assert "example" in param, f"{method} {path} {param['name']}: add it to openapi_examples.py"
            if op.body is not None:
                op.body().load(operation["requestBody"]["content"]["application/json"]["example"])
            if op.query is not None:
                query = {p["name"]: p["example"] for p in operation["parameters"]
                         if p["in"] == "query" and "example" in p}
                op.query().load(query)  # the docs page's "Try it out" sends these as they are
            for status, answer in operation["responses"].items():
                if status.startswith(("4", "5")):
                    assert answer["content"]["application/json"]["example"]["error"]["code"]
    ohlcv = {p["name"]: p.get("example") for p in doc["paths"]["/ohlcv"]["get"]["parameters"]}
    assert ohlcv["timeframe"] == "1h" and ohlcv["start"] == "2024-01-01T00:00:00Z" and ohlcv["limit"] == 3
    client = app.test_client()  # the examples work against the sim market as they stand
    answer = await client.get("/api/v1/ohlcv", query_string={k: v for k, v in ohlcv.items() if v is not None})
    assert (await answer.get_json())["bars"] == doc["paths"]["/ohlcv"]["get"]["responses"]["200"]["content"][
        "application/json"]["example"]["bars"]

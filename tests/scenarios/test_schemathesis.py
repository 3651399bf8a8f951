"""schemathesis against our own OpenAPI document, on a live Hypercorn server: a bounded number of
generated requests per operation finds no 500 and no answer outside the documented statuses,
content types, headers and schemas."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
import redis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import DATABASE_URL, REDIS_URL
from tests.support import schemathesis_hooks  # noqa: F401 - registers map_query (start before end)
from tests.support.live_server import hypercorn_server

pytestmark = pytest.mark.slow
MAX_EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
#: Valid identifiers of the sim market, mixed into generated cases so they reach deeper code.
SIM = {"market": "sim", "provider": "sim", "symbol": "SIM/USD"}
PAST = 1_700_006_400_000


@pytest.fixture(scope="module")
def live() -> Iterator[str]:
    uid = uuid.uuid4().hex[:10]
    schema, prefix = f"t_st_{uid}", f"t:st:{uid}"
    # Only the sim market: the document lists the markets and providers served, so generated
    # requests reach them, and an exchange unreachable from the test machine answers 503.
    env = {"DATABASE_SCHEMA": schema, "REDIS_PREFIX": prefix, "RATE_LIMIT_ENABLED": "false",
           "LOG_LEVEL": "CRITICAL", "ENABLED_MARKETS": "sim"}
    try:
        with hypercorn_server(env) as base:
            yield base
    finally:
        _drop(schema, prefix)


def _drop(schema: str, prefix: str) -> None:
    import asyncio

    async def drop_schema() -> None:
        conn = await asyncpg.connect(DATABASE_URL)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop_schema())
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _with_sim(case: Any, use_sim: bool) -> Any:
    """Half the cases name the sim market (and a short past range), so they reach the services."""
    if use_sim:
        for where in (case.query, case.body):
            if isinstance(where, dict):
                for name, value in SIM.items():
                    if name in where:
                        where[name] = value
                if isinstance(where.get("start"), int) and "end" in where:
                    where["start"] = PAST + where["start"] % 1000 * 60_000
                    where["end"] = where["start"] + 60 * 60_000
    return case


def _runner(operation: Any, label: str, live: str, session: requests.Session,
            seen: dict[str, set[int]]) -> Any:
    """A hypothesis test of one operation: bounded examples, our checks, statuses recorded."""

    @given(case=st.tuples(operation.as_strategy(), st.booleans()).map(lambda t: _with_sim(*t)))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        response = case.call(base_url=live + "/api/v1", session=session, timeout=30)
        seen.setdefault(label, set()).add(response.status_code)
        case.validate_response(response, checks=CHECKS)

    return run


def test_document_holds_every_operation(live: str) -> None:
    doc = requests.get(live + "/api/v1/openapi.json", timeout=10).json()
    assert {"/markets", "/providers", "/symbols", "/ohlcv", "/ticker"} <= set(doc["paths"])


def test_no_server_error_and_no_schema_breaking_answer(live: str) -> None:
    schema = schemathesis.openapi.from_url(live + "/api/v1/openapi.json")
    session = requests.Session()
    seen: dict[str, set[int]] = {}
    failures: list[str] = []
    for result in schema.get_all_operations():
        assert not isinstance(result, Err), f"the document has an invalid operation: {result.err()}"
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"

        run = _runner(operation, label, live, session, seen)
        try:
            run()
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{label}: {exc}")
    session.close()
    assert not failures, "\n\n".join(failures)
    assert len(seen) >= 8, seen
    # The sim cases reached real answers, not only validation errors.
    assert 200 in seen["GET /ohlcv"] and 200 in seen["GET /ticker"], seen
    assert 200 in seen["GET /gaps"], seen  # its documented constraints and the hook make valid ranges
    if "POST /backfill" in seen:
        assert 202 in seen["POST /backfill"], seen

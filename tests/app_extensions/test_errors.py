"""The one error mapping: AppError classes to docs/api.md's JSON, and unexpected errors to a bare 500."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator

import pytest
from quart import Quart
from werkzeug.exceptions import ServiceUnavailable

from core import errors
from core.metrics import HTTP_LATENCY, HTTP_REQUESTS

CASES = [
    (errors.InvalidParameter("bad", details={"limit": ["too big"]}), 400, "invalid_parameter"),
    (errors.InvalidJSON("not json"), 400, "invalid_json"),
    (errors.Unauthorized("no key"), 401, "unauthorized"),
    (errors.UnknownMarket("m"), 404, "unknown_market"),
    (errors.UnknownProvider("p"), 404, "unknown_provider"),
    (errors.UnknownSymbol("s"), 404, "unknown_symbol"),
    (errors.NotFound("n"), 404, "not_found"),
    (errors.RateLimited("slow down", retry_after=3), 429, "rate_limited"),
    (errors.PluginError("exchange said no"), 502, "provider_error"),
    (errors.AuthenticationPluginError("bad key"), 502, "provider_error"),
    (errors.NetworkPluginError("down"), 503, "provider_unavailable"),
    (errors.RateLimitedPluginError("banned", retry_after=2.5), 503, "provider_unavailable"),
    (errors.DataSourceError("db down"), 503, "dependency_unavailable"),
]


@pytest.fixture
def failing_app(app: Quart) -> Iterator[Quart]:
    state: dict[str, BaseException] = {}

    @app.get("/boom")
    async def boom() -> str:
        raise state["exc"]

    app.config["_boom"] = state
    yield app
    # The test-only route must not linger in the process-wide metrics as a route label.
    for metric in (HTTP_REQUESTS, HTTP_LATENCY):
        for family in metric.collect():
            for sample in family.samples:
                if sample.labels.get("route") == "/boom":
                    labels = {k: v for k, v in sample.labels.items() if k != "le"}
                    with contextlib.suppress(KeyError):
                        metric.remove(*labels.values())


@pytest.mark.parametrize(("exc", "status", "code"), CASES)
async def test_app_errors_map_to_status_and_code(
    failing_app: Quart, exc: errors.AppError, status: int, code: str
) -> None:
    failing_app.config["_boom"]["exc"] = exc
    r = await failing_app.test_client().get("/boom")
    body = await r.get_json()
    assert r.status_code == status and body["error"]["code"] == code
    if exc.retry_after is not None:
        assert int(r.headers["Retry-After"]) >= exc.retry_after
    if exc.details:
        assert body["error"]["details"] == exc.details


async def test_unexpected_error_is_500_with_request_id_and_no_trace(
    failing_app: Quart, caplog: pytest.LogCaptureFixture
) -> None:
    failing_app.config["_boom"]["exc"] = RuntimeError("secret internals at line 42")
    with caplog.at_level(logging.ERROR):
        r = await failing_app.test_client().get("/boom", headers={"X-Request-ID": "abc-1"})
    body = await r.get_json()
    assert r.status_code == 500
    assert body["error"]["code"] == "internal_error"
    assert body["error"]["details"] == {"request_id": "abc-1"}
    assert "secret" not in (await r.get_data(as_text=True)) and "Traceback" not in str(body)
    assert any(rec.exc_info and "abc-1" in rec.getMessage() for rec in caplog.records)


async def test_insane_request_ids_are_replaced(failing_app: Quart) -> None:
    r = await failing_app.test_client().get("/health", headers={"X-Request-ID": "x" * 500})
    assert r.status_code == 200 and len(r.headers["X-Request-ID"]) == 32


async def test_absurd_retry_after_is_capped_not_a_500(failing_app: Quart) -> None:
    for value in (float("inf"), float("nan"), 1e300):
        failing_app.config["_boom"]["exc"] = errors.RateLimitedPluginError("banned", retry_after=value)
        r = await failing_app.test_client().get("/boom")
        assert r.status_code == 503
        assert 1 <= int(r.headers["Retry-After"]) <= 86_400


async def test_dependency_details_are_logged_not_answered(failing_app: Quart) -> None:
    failing_app.config["_boom"]["exc"] = errors.DataSourceError(
        "database unavailable", details={"error": "Connect call failed ('10.1.2.3', 5432)"}
    )
    r = await failing_app.test_client().get("/boom")
    body = await r.get_json()
    assert r.status_code == 503 and body["error"]["code"] == "dependency_unavailable"
    assert "10.1.2.3" not in await r.get_data(as_text=True) and "details" not in body["error"]


async def test_unknown_http_methods_share_one_metrics_label(failing_app: Quart) -> None:
    from prometheus_client import REGISTRY

    await failing_app.test_client().open("/health", method="XYZZY123")  # type: ignore[call-arg]
    labels = {s.labels.get("method") for fam in REGISTRY.collect() if fam.name == "http_requests"
              for s in fam.samples}
    assert "XYZZY123" not in labels and "other" in labels


@pytest.mark.parametrize("exc", [errors.NetworkPluginError("unreachable"), errors.DataSourceError("db down"),
                                 errors.APIError(503, "dependency_unavailable", "shutting down")])
async def test_every_503_has_retry_after_even_when_the_error_names_none(
    failing_app: Quart, exc: errors.AppError
) -> None:
    """docs/api.md: every 503 carries Retry-After; one raised before the breaker opens names none."""
    assert exc.retry_after is None
    failing_app.config["_boom"]["exc"] = exc
    r = await failing_app.test_client().get("/boom")
    assert r.status_code == 503
    assert int(r.headers["Retry-After"]) == max(1, math.ceil(failing_app.config["DEPENDENCY_RETRY_AFTER"]))


async def test_a_framework_503_has_retry_after(failing_app: Quart) -> None:
    failing_app.config["_boom"]["exc"] = ServiceUnavailable()
    r = await failing_app.test_client().get("/boom")
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
    assert (await r.get_json())["error"]["code"] == "internal_error"
    failing_app.config["_boom"]["exc"] = ServiceUnavailable(retry_after=7)
    r = await failing_app.test_client().get("/boom")
    assert r.headers["Retry-After"] == "7"

"""Examples of the OpenAPI document: parameter values (the docs page's "Try it out" starts from them,
on the sim market, which needs no network or keys) and answers, one per operation.

``tests/blueprints/test_openapi.py`` loads every answer example through the operation's answer schema, so an
example that drifts from what the endpoint answers fails the suite.
"""

from __future__ import annotations

from typing import Any

from core.timeframes import TIMEFRAMES

#: Parameter name -> example value, for every operation that has the parameter...
PARAMETERS: dict[str, Any] = {
    "market": "sim", "provider": "sim", "symbol": "SIM/USD", "timeframe": "1h",
    "start": "2024-01-01T00:00:00Z", "end": "2024-01-01T03:00:00Z", "limit": 3,
}
#: ... except where an operation needs another one (path, parameter) -> value.
PARAMETER_OVERRIDES: dict[tuple[str, str], Any] = {
    ("/credentials/{provider}", "provider"): "binance",
    ("/backfill", "limit"): 10,
    ("/export", "format"): "csv",
    ("/backfill/{job_id}", "job_id"): "3f1c8e0a9b2d4c6e8f0a1b2c3d4e5f60",
}
_SIM_1H = [[1704067200000, 115.9, 116.03, 115.63, 115.9, 2071.428],
           [1704070800000, 115.9, 116.11, 115.66, 115.96, 1885.592],
           [1704074400000, 115.96, 116.24, 115.83, 116.17, 1892.548]]
_JOB = {"job_id": "3f1c8e0a9b2d4c6e8f0a1b2c3d4e5f60", "status": "running", "progress": 0.25,
        "bars_written": 360, "error": None, "market": "sim", "provider": "sim", "symbol": "SIM/USD",
        "start": 1704067200000, "end": 1704153600000, "chunks_total": 4, "chunks_done": 1}
#: (path, method) -> example answer of the success status.
ANSWERS: dict[tuple[str, str], Any] = {
    ("/markets", "get"): {"markets": [{"market": "sim", "providers": ["sim"], "timeframes": list(TIMEFRAMES)}]},
    ("/providers", "get"): {"market": "sim", "providers": [
        {"provider": "sim", "requires_credentials": False, "configured": True, "timeframes": list(TIMEFRAMES)}]},
    ("/symbols", "get"): {"market": "sim", "provider": "sim",
                          "symbols": ["SIM/USD", "SIMA/USD", "SIMB/EUR", "SIMC/USD"]},
    ("/ohlcv", "get"): {"market": "sim", "provider": "sim", "symbol": "SIM/USD", "timeframe": "1h",
                        "bars": _SIM_1H, "partial": False, "next": None},
    ("/ticker", "get"): {"market": "sim", "provider": "sim", "symbol": "SIM/USD", "ts": 1704067200000,
                         "last": 116.17, "bid": 116.16, "ask": 116.18, "stale": False},
    ("/backfill", "post"): {"job_id": _JOB["job_id"], "status": "queued"},
    ("/backfill", "get"): {"jobs": [_JOB]},
    ("/backfill/{job_id}", "get"): _JOB,
    ("/channels", "get"): {"channels": [
        {"channel": "sim:sim:SIM/USD:1m", "subscribers": 3, "feed": "poll", "state": "live",
         "last_bar_ts": 1704067200000, "lag_ms": 120}]},
    ("/gaps", "get"): {"missing": [[1704070800000, 1704074400000]], "verified_empty": []},
    ("/credentials", "get"): {"credentials": [
        {"provider": "binance", "testnet": False, "key_hint": "...x7Qa", "updated_at": 1704067200000}]},
}
#: Request bodies: (path, method) -> example.
BODIES: dict[tuple[str, str], Any] = {
    ("/backfill", "post"): {"market": "sim", "provider": "sim", "symbol": "SIM/USD",
                            "start": "2024-01-01T00:00:00Z", "end": "2024-01-02T00:00:00Z"},
    ("/credentials/{provider}", "put"): {"api_key": "your-api-key", "secret": "your-secret", "testnet": False},
}
#: An error answer, shown on every error status.
ERROR = {"error": {"code": "invalid_parameter", "message": "timeframe: Must be one of: 1m, 3m, 5m, ...",
                   "details": {"timeframe": ["Must be one of: 1m, 3m, 5m, ..."]}}}


def parameter(path: str, name: str) -> Any:
    """The example of parameter ``name`` of the operation at ``path`` (None: no example)."""
    return PARAMETER_OVERRIDES.get((path, name), PARAMETERS.get(name))

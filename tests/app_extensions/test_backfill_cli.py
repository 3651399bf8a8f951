"""The ``backfill`` and ``gaps`` CLI commands (run in-process through Quart's CLI runner)."""

from __future__ import annotations

import json
import time
from typing import Any

from app import create_app
from tests.support.ws import free_port

SERIES = ["--market", "sim", "--provider", "sim", "--symbol", "SIM/USD"]
T0 = 1_704_067_200_000


def test_backfill_command_shows_progress_and_a_summary_then_gaps_are_empty(
    app_config: dict[str, Any],
) -> None:
    app = create_app(app_config)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["backfill", *SERIES, "--start", "2024-01-01T00:00:00Z",
                                 "--end", "2024-01-02T12:00:00Z"])
    assert result.exit_code == 0, result.output
    assert "2,160 bars written" in result.stdout and "3 chunks, 3 calls" in result.stdout
    assert "verified empty: 0 range(s)" in result.stdout
    assert "chunks 3/3  bars 2,160" in result.stderr and "bars/s  ETA" in result.stderr
    # Run again: nothing is missing, nothing is fetched.
    again = runner.invoke(args=["backfill", *SERIES, "--start", str(T0), "--end", "2024-01-02T12:00Z"])
    assert again.exit_code == 0 and "0 bars written" in again.stdout and "0 calls" in again.stdout
    gaps = runner.invoke(args=["gaps", *SERIES, "--start", "2023-12-31T23:00Z", "--end",
                               "2024-01-02T12:00Z", "--json"])
    assert gaps.exit_code == 0, gaps.output
    assert json.loads(gaps.stdout) == {"missing": [[T0 - 3_600_000, T0]], "verified_empty": []}
    text = runner.invoke(args=["gaps", *SERIES, "--start", "2023-12-31T23:00Z", "--end",
                               "2024-01-02T12:00Z"])
    assert "missing: 1 range(s), 60 minutes" in text.stdout
    assert "2023-12-31T23:00:00Z  2024-01-01T00:00:00Z  (60 min)" in text.stdout


def test_backfill_command_errors(app_config: dict[str, Any]) -> None:
    runner = create_app(app_config).test_cli_runner()
    bad = runner.invoke(args=["backfill", "--market", "sim", "--provider", "nope", "--symbol",
                              "SIM/USD", "--start", "2024-01-01T00:00:00Z", "--end", "2024-01-02T00:00Z"])
    assert bad.exit_code == 1 and "unknown_provider" in bad.output
    bad = runner.invoke(args=["backfill", *SERIES[:4], "--symbol", "NOPE", "--start",
                              "2024-01-01T00:00:00Z", "--end", "2024-01-02T00:00Z"])
    assert bad.exit_code == 1 and "unknown_symbol" in bad.output
    bad = runner.invoke(args=["backfill", *SERIES, "--start", "someday", "--end", "2024-01-02T00:00Z"])
    assert bad.exit_code == 2 and "neither integer ms nor ISO-8601" in bad.output
    bad = runner.invoke(args=["backfill", *SERIES, "--start", "²", "--end", "2024-01-02T00:00Z"])
    assert bad.exit_code == 2 and "neither integer ms nor ISO-8601" in bad.output
    bad = runner.invoke(args=["gaps", *SERIES, "--start", "2024-01-02T00:00Z",
                              "--end", "2024-01-01T00:00Z"])
    assert bad.exit_code == 2 and "--end must be after --start" in bad.output


def test_gaps_command_refuses_unknown_markets_providers_and_symbols(
    app_config: dict[str, Any],
) -> None:
    """Like ``/ohlcv`` (issue 24.10): not a whole range reported "missing"."""
    runner = create_app(app_config).test_cli_runner()
    span = ["--start", "2024-01-01T00:00Z", "--end", "2024-01-02T00:00Z"]
    for args, code in ((["--market", "nope", "--provider", "sim", "--symbol", "SIM/USD"],
                        "unknown_market"),
                       (["--market", "sim", "--provider", "nope", "--symbol", "SIM/USD"],
                        "unknown_provider"),
                       ([*SERIES[:4], "--symbol", "NOPE/USD"], "unknown_symbol")):
        bad = runner.invoke(args=["gaps", *args, *span])
        assert bad.exit_code == 1 and f"Error: {code}" in bad.output, bad.output


def test_backfill_against_a_down_exchange_says_why_it_waits_and_gives_up_after_patience(
    app_config: dict[str, Any],
) -> None:
    """Issue 24.9: it waited up to an hour at 0 % with a warning every few seconds."""
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    app = create_app({**app_config, "CCXT_EXCHANGES": "binance", "PROVIDER_URLS": {"binance": down},
                      "PROVIDER_RETRIES": 0, "BACKFILL_RETRY_BASE": 0.05,
                      "BACKFILL_RETRY_MAX_WAIT": 0.2})
    runner = app.test_cli_runner()
    began = time.monotonic()
    result = runner.invoke(args=["backfill", "--market", "crypto", "--provider", "binance",
                                 "--symbol", "BTC/USDT", "--start", "2024-01-01T00:00Z",
                                 "--end", "2024-01-01T12:00Z", "--patience", "1"])
    assert result.exit_code == 1, result.output
    assert time.monotonic() - began < 20
    assert "Error: provider_unavailable: " in result.stderr, result.stderr
    waiting = [line for line in result.stderr.splitlines() if line.startswith("waiting: ")]
    assert waiting and waiting[0].startswith("waiting: provider_unavailable: "), result.stderr
    assert "(patience 1 s)" in waiting[0] and "Ctrl-C stops" in waiting[0]
    bad = runner.invoke(args=["backfill", *SERIES, "--start", str(T0), "--end", str(T0 + 60_000),
                              "--patience", "-1"])
    assert bad.exit_code == 2

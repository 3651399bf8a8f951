"""The ``export`` CLI command (run in-process through Quart's CLI runner) on the sim market."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app import create_app

SERIES = ["--market", "sim", "--provider", "sim", "--symbol", "SIM/USD"]
T0 = 1_704_067_200_000


def test_export_command_writes_the_file_with_a_progress_bar(app_config: dict[str, Any], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    runner = create_app(app_config).test_cli_runner()
    args = ["export", *SERIES, "--timeframe", "1h", "--start", "2024-01-01T00:00:00Z",
            "--end", "2024-01-03T00:00:00Z", "--format", "parquet"]
    missing = runner.invoke(args=[*args, "--output", str(tmp_path / "x.parquet")])
    assert missing.exit_code == 1 and "range_not_stored" in missing.output and "--backfill" in missing.output
    assert not (tmp_path / "x.parquet").exists()
    result = runner.invoke(args=[*args, "--output", str(tmp_path / "x.parquet"), "--backfill"])
    assert result.exit_code == 0, result.output
    assert "48 bars (2,880 stored 1m bars)" in result.stdout and "x.parquet" in result.stdout
    assert "100.0%  bars 48" in result.stderr and "bars/s  ETA" in result.stderr
    table = pq.read_table(tmp_path / "x.parquet")
    assert table.num_rows == 48 and table.schema.field("ts").type == pa.timestamp("ms", tz="UTC")
    assert table.schema.metadata[b"timeframe"] == b"1h"
    # Without --output: the API's file name, in the current directory.
    monkeypatch.chdir(tmp_path)
    again = runner.invoke(args=[*args[:-2], "--format", "csv"])
    assert again.exit_code == 0, again.output
    written = tmp_path / "sim_sim_SIM-USD_1h_20240101T0000Z_20240103T0000Z.csv"
    assert written.read_text().splitlines()[0] == "ts,open,high,low,close,volume"
    assert len(written.read_text().splitlines()) == 49


def test_export_command_errors(app_config: dict[str, Any]) -> None:
    runner = create_app(app_config).test_cli_runner()
    base = ["export", *SERIES, "--start", "2024-01-01T00:00:00Z", "--end", "2024-01-02T00:00Z"]
    bad = runner.invoke(args=[*base, "--format", "xlsx"])
    assert bad.exit_code == 2 and "xlsx" in bad.output
    bad = runner.invoke(args=["export", *SERIES, "--start", "2024-01-02T00:00Z", "--end",
                              "2024-01-01T00:00Z", "--format", "csv"])
    assert bad.exit_code == 2 and "--end must be after --start" in bad.output
    bad = runner.invoke(args=["export", "--market", "sim", "--provider", "nope", "--symbol", "X",
                              "--start", "2024-01-01T00:00Z", "--end", "2024-01-02T00:00Z", "--format", "csv"])
    assert bad.exit_code == 1 and "unknown_provider" in bad.output

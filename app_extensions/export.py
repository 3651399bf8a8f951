"""Bulk export wired into the app: the ``Exporter`` (``get_exporter(app)``) and the CLI command

``quart --app app:create_app export --market sim --provider sim --symbol SIM/USD --timeframe 1h
--start 2024-01-01T00:00:00Z --end 2025-01-01T00:00:00Z --format parquet [--output FILE]
[--backfill]``, which writes the export of ``GET /api/v1/export`` to a file (by default the name
the API gives it, in the current directory) with a progress bar on stderr and a summary on stdout.
``--backfill`` first completes the missing minutes in this process (as the ``backfill`` command
does); without it a range with missing minutes fails, listing them.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import TextIO

import click
from quart import Quart

from app_extensions.backfill_cli import TimeParam, iso
from app_extensions.db_pool import Database, get_database
from app_extensions.redis_client import get_redis
from app_extensions.services import get_services
from core.errors import AppError, RangeNotStored
from core.timeframes import TIMEFRAMES
from core.types import Series
from services.backfill.manager import readable
from services.export import FORMATS, Exporter, ExportPlan, ExportSettings
from services.settings import build


def init_export(app: Quart, database: Database) -> None:
    """Put the ``Exporter`` over ``database`` in ``app.extensions`` and register ``export``."""
    app.extensions["export"] = Exporter(database, build(ExportSettings, app.config))

    @app.cli.command("export")
    @click.option("--market", required=True, help="crypto, stocks or sim")
    @click.option("--provider", required=True, help="e.g. binance, alpaca, sim")
    @click.option("--symbol", required=True, help="e.g. BTC/USDT, AAPL, SIM/USD")
    @click.option("--timeframe", default="1m", show_default=True, type=click.Choice(list(TIMEFRAMES)))
    @click.option("--start", required=True, type=TimeParam(),
                  help="inclusive; ms or ISO-8601 with a zone (2024-01-01T00:00:00Z)")
    @click.option("--end", required=True, type=TimeParam(), help="exclusive; ms or ISO-8601 with a zone")
    @click.option("--format", "fmt", required=True, type=click.Choice(list(FORMATS)))
    @click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="the file to write (default: the API's file name, in this directory)")
    @click.option("--backfill", is_flag=True, help="first complete the missing minutes (in this process)")
    def export(market: str, provider: str, symbol: str, timeframe: str, start: int, end: int,
               fmt: str, output: Path | None, backfill: bool) -> None:
        """Write every closed bar of [start, end) from storage to a file, with a progress bar."""
        if end <= start:
            raise click.BadParameter("--end must be after --start")
        try:
            summary = asyncio.run(run_export(app, Series(market, provider, symbol), timeframe, start,
                                             end, fmt, output, backfill, sys.stderr))
        except RangeNotStored as exc:
            raise click.ClickException(f"{readable(exc)}; run again with --backfill") from exc
        except AppError as exc:
            raise click.ClickException(readable(exc)) from exc
        click.echo(summary)


class ExportProgress:
    """A one-line progress bar of an export: share of the range, bars, bytes, rate and ETA
    (redrawn at most 10x/s on a terminal, one line per 10% otherwise)."""

    def __init__(self, plan: ExportPlan, out: TextIO, width: int = 30) -> None:
        self.plan, self.out, self.width = plan, out, width
        self.tty = out.isatty()
        self.bars = self.bytes = 0
        self.share = 0.0
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._last_decile = -1

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        filled = int(self.share * self.width)
        rate = self.bars / elapsed if elapsed > 0 else 0.0
        eta = elapsed * (1 - self.share) / self.share if self.share > 0 else 0.0
        return (f"[{'#' * filled}{'-' * (self.width - filled)}] {self.share * 100:5.1f}%"
                f"  bars {self.bars:,}  {self.bytes / 2**20:,.1f} MiB  {rate:,.0f} bars/s"
                f"  ETA {int(eta) // 60}:{int(eta) % 60:02d}")

    def batch(self, bars: int, last_ts: int) -> None:
        self.bars += bars
        span = self.plan.end - self.plan.start
        self.share = min(1.0, (last_ts - self.plan.start) / span) if span > 0 else 1.0
        self.draw()

    def draw(self, done: bool = False) -> None:
        if done:
            self.share = 1.0
        now = time.monotonic()
        if self.tty:
            if done or now - self._last_draw >= 0.1:
                self._last_draw = now
                self.out.write("\r" + self.line() + ("\n" if done else ""))
                self.out.flush()
            return
        decile = int(10 * self.share)
        if decile != self._last_decile:
            self._last_decile = decile
            self.out.write(self.line() + "\n")
            self.out.flush()


async def run_export(app: Quart, series: Series, timeframe: str, start: int, end: int, fmt: str,
                     output: Path | None, backfill: bool, err: TextIO) -> str:
    """Run one export in this process into ``output``; returns the summary text."""
    exporter, services = get_exporter(app), get_services(app)
    await get_database(app).open()
    await get_redis(app).open()
    try:
        services.markets.check_provider(series.market, series.provider)
        plan = exporter.plan(series, timeframe, start, end)
        if backfill:
            await services.backfill.check_series(series)
            await services.backfill.backfill(series, plan.start, plan.end)
        stored = await exporter.check(plan)
        path = output or Path(plan.file_name(FORMATS[fmt]))
        progress = ExportProgress(plan, err)
        with path.open("wb") as f:
            async for chunk in exporter.stream(plan, FORMATS[fmt], None, progress.batch):
                progress.bytes += len(chunk)
                await asyncio.to_thread(f.write, chunk)
        progress.draw(done=True)
    finally:
        await services.markets.close()
        await get_redis(app).close()
        await get_database(app).close()
    seconds = time.monotonic() - progress.started
    return (f"export {series.key()} {timeframe} [{iso(plan.start)}, {iso(plan.end)}) as {fmt}:"
            f" {progress.bars:,} bars ({stored.rows:,} stored 1m bars) in {seconds:.1f} s,"
            f" {progress.bytes:,} bytes written to {path}")


def get_exporter(app: Quart) -> Exporter:
    exporter: Exporter = app.extensions["export"]
    return exporter

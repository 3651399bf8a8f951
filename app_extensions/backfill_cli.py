"""Quart CLI commands of backfills:

``quart --app app:create_app backfill --market sim --provider sim --symbol SIM/USD
--start 2024-01-01T00:00:00Z --end 2024-02-01T00:00:00Z`` completes the stored 1m history of the
range in this process, with a progress bar on stderr (bars written, rate, ETA) and a summary on
stdout; an interrupted run is resumed by running it again (the gap ledger remembers every chunk
written). While the provider fails it retries for ``--patience`` seconds (default
``BACKFILL_PATIENCE``), printing why it waits; then it exits with status 1 and the error.
``gaps`` lists missing and verified-empty ranges. Times: integer ms, or ISO-8601 with a
zone (``2024-01-01T00:00:00Z``), as in REST: a time without a zone is refused.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any, TextIO

import click
from quart import Quart

from app_extensions.db_pool import get_database
from app_extensions.redis_client import get_redis
from app_extensions.services import get_services
from core.errors import AppError
from core.timeframes import MINUTE_MS
from core.times import FORMAT_TEXT, TimeError, parse_time
from core.types import Series, to_dt
from services.backfill.manager import Progress, readable


class TimeParam(click.ParamType):
    """Integer ms, or ISO-8601 with a zone: the REST rule (``core.times.parse_time``)."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            return parse_time(value)
        except TimeError as exc:
            reason = "is neither integer ms nor ISO-8601 with a zone" if str(exc) == FORMAT_TEXT else exc
            self.fail(f"{value!r} {reason}", param, ctx)


def iso(ms: int) -> str:
    return to_dt(ms).strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressBar:
    """A one-line progress bar: chunks, bars written, rate and ETA (redrawn at most 10x/s on a
    terminal, one line per 10% otherwise)."""

    def __init__(self, out: TextIO, width: int = 30) -> None:
        self.out, self.width = out, width
        self.tty = out.isatty()
        self._last_draw = 0.0
        self._last_decile = -1
        self._last_wait = -float("inf")
        #: Seconds between two "waiting" lines while the provider keeps failing.
        self.wait_every = 10.0

    def line(self, p: Progress) -> str:
        share = p.chunks_done / p.chunks_total if p.chunks_total else 1.0
        filled = int(share * self.width)
        rate = p.bars_written / p.elapsed if p.elapsed > 0 else 0.0
        eta = p.elapsed * (p.chunks_total - p.chunks_done) / p.chunks_done if p.chunks_done else 0.0
        return (f"[{'#' * filled}{'-' * (self.width - filled)}] {share * 100:5.1f}%"
                f"  chunks {p.chunks_done}/{p.chunks_total}  bars {p.bars_written:,}"
                f"  {rate:,.0f} bars/s  ETA {_duration(eta)}")

    def update(self, p: Progress) -> None:
        now, done = time.monotonic(), p.chunks_done >= p.chunks_total
        if self.tty:
            if done or now - self._last_draw >= 0.1:
                self._last_draw = now
                self.out.write("\r" + self.line(p))
                self.out.flush()
            return
        decile = int(10 * p.chunks_done / p.chunks_total) if p.chunks_total else 10
        if decile != self._last_decile:
            self._last_decile = decile
            self.out.write(self.line(p) + "\n")
            self.out.flush()

    def waiting(self, reason: str) -> None:
        """Say why the backfill is not moving (a chunk waits to retry), at most every
        ``wait_every`` seconds."""
        now = time.monotonic()
        if now - self._last_wait < self.wait_every:
            return
        self._last_wait = now
        self.out.write(("\n" if self.tty and self._last_draw else "") + f"waiting: {reason};"
                       " Ctrl-C stops (run the same command again to resume)\n")
        self.out.flush()

    def finish(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def _minutes(ranges: list[list[int]]) -> int:
    return sum(b - a for a, b in ranges) // MINUTE_MS


async def _opened(app: Quart) -> None:
    await get_database(app).open()
    await get_redis(app).open()


async def _closed(app: Quart) -> None:
    await get_services(app).markets.close()
    await get_redis(app).close()
    await get_database(app).close()


async def run_backfill(app: Quart, series: Series, start: int, end: int, err: TextIO,
                       patience: float | None = None) -> str:
    """Run one backfill in this process; returns the summary text. ``patience``: seconds a
    failing provider is retried (default ``BACKFILL_PATIENCE``)."""
    manager = get_services(app).backfill
    await _opened(app)
    bar = ProgressBar(err)
    try:
        await manager.check_series(series)
        result = await manager.backfill(series, start, end, bar.update, patience=patience,
                                        on_wait=bar.waiting)
        bar.finish()
        gaps = await manager.gaps(series, start, end)
    finally:
        await _closed(app)
    rate = result.bars_written / result.elapsed if result.elapsed > 0 else 0.0
    return (f"backfill {series.key()} [{iso(start)}, {iso(end)}): {result.bars_written:,} bars"
            f" written in {result.elapsed:.1f} s ({rate:,.0f} bars/s), {result.chunks_done} chunks,"
            f" {result.calls} calls\n"
            f"missing: {len(gaps['missing'])} range(s), {_minutes(gaps['missing']):,} minutes"
            f" (the last minutes before now are never recorded complete);"
            f" verified empty: {len(gaps['verified_empty'])} range(s),"
            f" {_minutes(gaps['verified_empty']):,} minutes")


async def run_gaps(app: Quart, series: Series, start: int, end: int) -> dict[str, list[list[int]]]:
    await _opened(app)
    try:
        manager = get_services(app).backfill
        await manager.check_series(series)  # unknown market, provider or symbol: as /gaps
        return await manager.gaps(series, start, end)
    finally:
        await _closed(app)


def _series_options(fn: Any) -> Any:
    for opt in reversed([
        click.option("--market", required=True, help="crypto, stocks or sim"),
        click.option("--provider", required=True, help="e.g. binance, alpaca, sim"),
        click.option("--symbol", required=True, help="e.g. BTC/USDT, AAPL, SIM/USD"),
        click.option("--start", required=True, type=TimeParam(),
                     help="inclusive; ms or ISO-8601 with a zone (2024-01-01T00:00:00Z)"),
        click.option("--end", required=True, type=TimeParam(), help="exclusive; ms or ISO-8601 with a zone"),
    ]):
        fn = opt(fn)
    return fn


def _check(start: int, end: int) -> None:
    if end <= start:
        raise click.BadParameter("--end must be after --start")


def init_backfill_cli(app: Quart) -> None:
    """Register the ``backfill`` and ``gaps`` commands."""

    @app.cli.command("backfill")
    @_series_options
    @click.option("--patience", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
                  help="how long to retry a failing provider before giving up (default:"
                       " BACKFILL_PATIENCE, 3600); 0 fails at the first error")
    def backfill(market: str, provider: str, symbol: str, start: int, end: int,
                 patience: float | None) -> None:
        """Complete the stored 1m history of a series over [start, end), with a progress bar."""
        _check(start, end)
        series = Series(market, provider, symbol)
        try:
            summary = asyncio.run(run_backfill(app, series, start, end, sys.stderr, patience))
        except AppError as exc:
            raise click.ClickException(readable(exc)) from exc
        except KeyboardInterrupt:
            raise click.ClickException("interrupted; run the same command again to resume") from None
        click.echo(summary)

    @app.cli.command("gaps")
    @_series_options
    @click.option("--json", "as_json", is_flag=True, help="print the API's JSON answer")
    def gaps(market: str, provider: str, symbol: str, start: int, end: int, as_json: bool) -> None:
        """List missing and verified-empty ranges of a 1m series within [start, end)."""
        _check(start, end)
        try:
            found = asyncio.run(run_gaps(app, Series(market, provider, symbol), start, end))
        except AppError as exc:
            raise click.ClickException(readable(exc)) from exc
        if as_json:
            click.echo(json.dumps(found))
            return
        for kind in ("missing", "verified_empty"):
            click.echo(f"{kind}: {len(found[kind])} range(s), {_minutes(found[kind]):,} minutes")
            for a, b in found[kind]:
                click.echo(f"  {iso(a)}  {iso(b)}  ({(b - a) // MINUTE_MS:,} min)")

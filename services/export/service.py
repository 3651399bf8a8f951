"""The exporter: which buckets an export holds, whether storage has them, and their bytes.

``plan`` turns ``[start, end)`` into whole closed buckets, as ``/ohlcv`` does (the buckets that
start at or after ``start`` and before ``end``), never the forming one, and refuses more than
``EXPORT_MAX_BARS`` of them. ``check`` answers from storage only: the 1m minutes of those buckets
must each be stored or verified empty (the gap ledger, then stored bars where it has holes), else
``RangeNotStored``; it also fingerprints the stored 1m rows (count and a hash of their values), so
an ETag changes when a stored bar is revised. ``stream`` runs the query ``/ohlcv`` runs
(``services.bars.aggregates.bars_query``) as a binary ``COPY`` on its own pooled connection, in a task
that can be at most ``QUEUE_CHUNKS`` chunks ahead of the client (asyncpg stops reading while its
output waits, so PostgreSQL waits too): memory does not grow with the range. ``reserve`` takes one
of ``EXPORT_MAX_CONCURRENT`` slots (503 ``dependency_unavailable`` when none is free), so running
exports cannot hold every pool connection; ``ExportSlot.hold`` keeps it for as long as a stream runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass

from core.errors import DataSourceError, InvalidParameter, RangeNotStored
from core.ports import Database
from core.timeframes import MINUTE_MS, bucket_ceil, bucket_start, now_ms, tf_ms
from core.types import Series, subtract_ranges, to_dt
from services.backfill.gaps import bar_islands
from services.bars import aggregates, storage
from services.export.formats import Format, encode
from services.export.rows import CopyParser, to_batch
from services.settings import setting

log = logging.getLogger(__name__)
__all__ = ["QUEUE_CHUNKS", "ExportPlan", "ExportSettings", "ExportSlot", "Exporter", "RangeNotStored", "Stored"]

#: Told ``(bars, last bar's ts)`` after each batch (the CLI's progress bar).
BatchCallback = Callable[[int, int], None]
#: Missing ranges listed in a 409's details (``missing_minutes`` counts all of them).
MISSING_LISTED = 100
#: COPY chunks read ahead of the encoder (each at most asyncpg's read size).
QUEUE_CHUNKS = 4
#: Bumped when the bytes of an export change for the same stored rows (the ETag then changes).
FORMAT_VERSION = 1
_FINGERPRINT_SQL = (
    "SELECT count(*), coalesce(sum(hashfloat8(open)::int8 + 3 * hashfloat8(high)::int8"
    " + 5 * hashfloat8(low)::int8 + 7 * hashfloat8(close)::int8 + 11 * hashfloat8(volume)::int8),"
    " 0)::text FROM ohlcv_1m WHERE market = $1 AND provider = $2 AND symbol = $3"
    " AND ts >= $4 AND ts < $5"
)


@dataclass(frozen=True)
class ExportSettings:
    """``build(ExportSettings, config)``."""

    #: Most buckets one export may span (400 beyond).
    max_bars: int = setting("EXPORT_MAX_BARS")
    #: Bars per batch: a Parquet row group, an Arrow record batch, a chunk of CSV.
    batch_rows: int = setting("EXPORT_BATCH_ROWS")
    #: Longest one export's COPY may take, slow clients included (seconds).
    timeout: float = setting("EXPORT_TIMEOUT")
    #: Most exports this instance streams at once (each holds a pool connection); 503 beyond.
    max_concurrent: int = setting("EXPORT_MAX_CONCURRENT")


@dataclass(frozen=True)
class ExportPlan:
    """The closed buckets ``[start, end)`` of ``timeframe`` one export holds."""

    series: Series
    timeframe: str
    start: int
    end: int

    @property
    def buckets(self) -> int:
        return (self.end - self.start) // tf_ms(self.timeframe)

    def metadata(self) -> dict[str, str]:
        """The series, for the Parquet and Arrow schema's metadata."""
        s = self.series
        return {"market": s.market, "provider": s.provider, "symbol": s.symbol,
                "timeframe": self.timeframe}

    def file_name(self, fmt: Format) -> str:
        """``sim_sim_SIM-USD_1h_20240101T0000Z_20250101T0000Z.parquet``: the series and the range
        (ASCII letters, digits, ``-``, ``_`` and ``.`` only)."""
        symbol = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "-" for c in self.series.symbol)
        parts = [self.series.market, self.series.provider, symbol, self.timeframe,
                 *(to_dt(t).strftime("%Y%m%dT%H%MZ") for t in (self.start, self.end))]
        safe = ["".join(c if c.isascii() and (c.isalnum() or c in "-.") else "-" for c in p) for p in parts]
        return "_".join(safe) + "." + fmt.extension


@dataclass(frozen=True)
class Stored:
    """The stored 1m rows under an export: how many, and a hash of their values."""

    rows: int
    digest: str


class ExportSlot:
    """One of the exporter's ``max_concurrent`` slots, taken by ``Exporter.reserve``; given back
    once (``release``, or when the stream it holds ends, fails or is closed)."""

    def __init__(self, exporter: Exporter) -> None:
        self._exporter: Exporter | None = exporter

    def release(self) -> None:
        if self._exporter is not None:
            self._exporter.running -= 1
            self._exporter = None

    def hold(self, body: AsyncGenerator[bytes, None]) -> HeldStream:
        """``body``, with this slot given back when it ends, fails or is closed (the client left)."""
        return HeldStream(body, self)

    def __del__(self) -> None:  # a stream never started (its response never sent) leaks no slot
        self.release()


class HeldStream:
    """An export's bytes holding its slot: released on the end, an error, a cancellation or
    ``aclose`` (which Quart calls when the answer ends or the client leaves)."""

    def __init__(self, body: AsyncGenerator[bytes, None], slot: ExportSlot) -> None:
        self.body, self.slot = body, slot

    def __aiter__(self) -> HeldStream:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await anext(self.body)
        except BaseException:  # StopAsyncIteration, the COPY's error, the client's disconnect
            self.slot.release()
            raise

    async def aclose(self) -> None:
        try:
            await self.body.aclose()
        finally:
            self.slot.release()


class Exporter:
    """Plans, checks and streams exports. Collaborators come in through the constructor."""

    def __init__(self, db: Database, settings: ExportSettings) -> None:
        self.db, self.settings = db, settings
        #: Slots taken (``reserve``) and not yet given back.
        self.running = 0

    def reserve(self) -> ExportSlot:
        """A slot for one export's stream; ``DataSourceError`` (503) when all
        ``max_concurrent`` are taken, before anything is streamed."""
        if self.running >= self.settings.max_concurrent:
            raise DataSourceError(
                f"all {self.settings.max_concurrent} export slots of this instance are busy"
                " (EXPORT_MAX_CONCURRENT); retry after the seconds in Retry-After")
        self.running += 1
        return ExportSlot(self)

    def plan(self, series: Series, timeframe: str, start: int, end: int, now: int | None = None) -> ExportPlan:
        """The closed buckets of ``[start, end)``; ``InvalidParameter`` beyond ``max_bars``."""
        lo = bucket_ceil(start, timeframe)
        closed = bucket_start(now_ms() if now is None else now, timeframe)  # the forming bucket
        plan = ExportPlan(series, timeframe, lo, max(lo, min(bucket_ceil(end, timeframe), closed)))
        if plan.buckets > self.settings.max_bars:
            most = self.settings.max_bars
            raise InvalidParameter(
                f"end: the range spans {plan.buckets:,} {timeframe} bars, at most {most:,}"
                " (EXPORT_MAX_BARS) per export; split it",
                details={"end": [f"at most {most} bars after start"], "bars": plan.buckets})
        return plan

    async def check(self, plan: ExportPlan) -> Stored:
        """The fingerprint of the stored 1m rows under ``plan``; ``RangeNotStored`` when some of
        its minutes are neither stored nor verified empty (details: ``missing_minutes`` and the
        first ``MISSING_LISTED`` ranges; the exception's ``missing`` holds all of them)."""
        s = plan.series
        async with self.db.acquire() as conn:
            missing = await storage.missing_ranges(conn, s, plan.start, plan.end)
            if missing:  # the ledger's holes may still hold stored bars (a live poller's)
                islands = await bar_islands(conn, s, missing[0][0], missing[-1][1])
                missing = [r for a, b in missing for r in subtract_ranges(a, b, islands)]
            if missing:
                minutes = sum(b - a for a, b in missing) // MINUTE_MS
                raise RangeNotStored(
                    f"{minutes:,} minute(s) of {s.key()} in the range are not stored; backfill them"
                    " (POST /backfill, or this request with backfill=true) and ask again",
                    missing=missing, details={"missing_minutes": minutes,
                                              "missing": [list(r) for r in missing[:MISSING_LISTED]]})
            row = await conn.fetchrow(_FINGERPRINT_SQL, s.market, s.provider, s.symbol,
                                      to_dt(plan.start), to_dt(plan.end))
        assert row is not None
        return Stored(int(row[0]), str(row[1]))

    @staticmethod
    def etag(plan: ExportPlan, stored: Stored, fmt: Format) -> str:
        """A strong ETag of the identity answer: the format, the buckets and the stored rows."""
        key = (f"{FORMAT_VERSION}|{fmt.name}|{plan.series.key()}|{plan.timeframe}|{plan.start}|"
               f"{plan.end}|{stored.rows}|{stored.digest}")
        return '"' + hashlib.sha256(key.encode()).hexdigest()[:32] + '"'

    async def stream(self, plan: ExportPlan, fmt: Format, encoding: str | None,
                     on_batch: BatchCallback | None = None) -> AsyncGenerator[bytes, None]:
        """The answer's bytes: the bars of ``plan`` in ``fmt``, compressed with ``encoding``;
        ``on_batch(bars, last_ts)`` after each batch. Each batch is encoded in a worker thread
        (Arrow, zstd, zlib and brotli release the GIL), so other requests are served meanwhile."""
        pipeline = encode(fmt, plan.metadata(), encoding)

        def add(block: bytes) -> tuple[bytes, int, int]:
            batch = to_batch(block)
            return pipeline.add(batch), len(batch), int(batch.ts[-1]) if len(batch) else plan.start

        yield pipeline.start()
        async for block in self._blocks(plan):
            out, bars, last = await asyncio.to_thread(add, block)
            if on_batch is not None:
                on_batch(bars, last)
            if out:
                yield out
        yield await asyncio.to_thread(pipeline.finish)

    async def _blocks(self, plan: ExportPlan) -> AsyncIterator[bytes]:
        """Blocks of ``batch_rows`` rows of binary COPY data, then the rest."""
        s = plan.series
        query = aggregates.bars_query(self.db.mode, s, plan.timeframe, plan.start, plan.end, plan.buckets)
        if query is None:
            return
        chunks: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(QUEUE_CHUNKS)
        task = asyncio.create_task(self._copy(query, chunks), name=f"export-copy {s.key()}")
        parser = CopyParser(self.settings.batch_rows)
        try:
            while (item := await chunks.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                for block in parser.feed(item):
                    yield block
            rest = parser.finish()
            if rest:
                yield rest
        finally:
            task.cancel()  # the client left, or the answer failed: stop the COPY
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _copy(self, query: tuple[str, list[object]],
                    chunks: asyncio.Queue[bytes | BaseException | None]) -> None:
        try:
            async with self.db.acquire() as conn:
                await conn.copy_from_query(query[0], *query[1], output=chunks.put, format="binary",
                                           timeout=self.settings.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # handed to the reader, which raises it in the answer's task
            await chunks.put(exc)
            return
        await chunks.put(None)

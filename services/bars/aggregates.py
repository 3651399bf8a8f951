"""Bars of every timeframe from storage, in either storage mode; and keeping aggregates fresh.

``timescale`` mode: ``ohlcv_1m`` is a hypertable and 5m, 15m, 1h, 4h, 1d and 1w are hierarchical
continuous aggregates with real-time aggregation (``migrations/002_*.timescale.sql``); 3m, 30m, 2h,
6h and 12h are aggregated at query time from the nearest aggregate whose bucket divides theirs.
``plain`` mode: every timeframe is aggregated at query time over ``ohlcv_1m``.

Both modes answer alike: bars of the buckets with ``start_ms <= ts < end_ms``, ascending, the first
``limit``, each built from every 1m bar of its bucket (a bucket that starts before ``end_ms`` is
whole even when it ends after it). Buckets are aligned to the epoch; 1w buckets start on Monday.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from core.timeframes import TIMEFRAMES, WEEK_OFFSET_MS, Bar, bucket_ceil, bucket_start, tf_ms
from core.types import Series

log = logging.getLogger(__name__)

MODES = ("timescale", "plain")
#: Continuous aggregates in hierarchy order (each is built from the one before it, or from
#: ``ohlcv_1m``; 1d from 1h). Refreshes run in this order.
CAGGS: tuple[tuple[str, str], ...] = (
    ("5m", "ohlcv_5m"),
    ("15m", "ohlcv_15m"),
    ("1h", "ohlcv_1h"),
    ("4h", "ohlcv_4h"),
    ("1d", "ohlcv_1d"),
    ("1w", "ohlcv_1w"),
)
CAGG_VIEWS: dict[str, str] = dict(CAGGS)
#: TimescaleDB mode: the stored timeframe each other timeframe is aggregated from at query time
#: (the largest stored bucket that divides it and shares its alignment).
DERIVED_FROM: dict[str, str] = {"3m": "1m", "30m": "15m", "2h": "1h", "6h": "1h", "12h": "4h"}
#: Config names the TimescaleDB migration reads, with their defaults (empty = policy off).
TIMESCALE_SETTINGS: dict[str, str] = {
    "TIMESCALE_CHUNK_INTERVAL": "7 days",
    "TIMESCALE_REFRESH_LOOKBACK": "3 days",
    "TIMESCALE_REFRESH_SCHEDULE": "5 minutes",
    "TIMESCALE_COMPRESSION_AFTER": "",
    "TIMESCALE_RETENTION_AFTER": "",
}
_EPOCH_DT = datetime(1970, 1, 1, tzinfo=UTC)
#: Origins of date_bin: the epoch, and for 1w the first Monday after it.
_EPOCH_ORIGIN = _EPOCH_DT
_MONDAY_ORIGIN = _EPOCH_DT + timedelta(milliseconds=WEEK_OFFSET_MS)
_SERIES = "market = $1 AND provider = $2 AND symbol = $3"


def _check(mode: str, timeframe: str) -> None:
    if mode not in MODES:
        raise ValueError(f"storage mode must be one of {MODES}, got {mode!r}")
    if timeframe not in TIMEFRAMES:
        raise ValueError(f"unknown timeframe {timeframe!r}")


def source_of(mode: str, timeframe: str) -> tuple[str, bool]:
    """The relation that answers ``timeframe`` in ``mode`` and whether its rows are grouped again
    at query time: ``("ohlcv_1h", False)`` reads an aggregate as is."""
    _check(mode, timeframe)
    if timeframe == "1m":
        return "ohlcv_1m", False
    if mode == "plain":
        return "ohlcv_1m", True
    if timeframe in CAGG_VIEWS:
        return CAGG_VIEWS[timeframe], False
    base = DERIVED_FROM[timeframe]
    return ("ohlcv_1m" if base == "1m" else CAGG_VIEWS[base]), True


def has_aggregates(mode: str) -> bool:
    """Whether ``mode`` keeps continuous aggregates (which ``refresh_window`` refreshes)."""
    return mode == "timescale"


def describe_mode(mode: str) -> str:
    """One line for the start-up log and the readiness check: what answers each timeframe."""
    if mode == "timescale":
        derived = ", ".join(f"{tf} from {base}" for tf, base in DERIVED_FROM.items())
        return (
            "timescale: hypertable ohlcv_1m; continuous aggregates (real-time) "
            f"{', '.join(tf for tf, _ in CAGGS)}; at query time {derived}"
        )
    if mode == "plain":
        return "plain: every timeframe aggregated at query time over ohlcv_1m"
    return f"{mode}: storage mode not determined"


def bars_query(mode: str, series: Series, timeframe: str, start_ms: int, end_ms: int,
               limit: int) -> tuple[str, list[object]] | None:
    """The SQL (and its arguments) ``select_bars`` runs: rows ``(ts timestamptz, open, high, low,
    close, volume)`` of the bars of ``timeframe`` with ``start_ms <= ts < end_ms``, ascending, at
    most ``limit``; None when the range holds no bucket. Bulk export runs the very same query
    through ``COPY``, so both give the same values."""
    relation, grouped = source_of(mode, timeframe)
    lo = bucket_ceil(start_ms, timeframe)  # the first bucket that starts at or after start_ms
    hi = bucket_ceil(end_ms, timeframe)  # past the last bucket that starts before end_ms
    if limit <= 0 or hi <= lo:
        return None
    tcol = "ts" if relation == "ohlcv_1m" else "bucket"
    args: list[object] = [series.market, series.provider, series.symbol, _dt(lo), _dt(hi), limit]
    if not grouped:
        sql = (
            f"SELECT {tcol}, open, high, low, close, volume FROM {relation}"
            f" WHERE {_SERIES} AND {tcol} >= $4 AND {tcol} < $5 ORDER BY {tcol} LIMIT $6"
        )
    else:
        if mode == "timescale":
            first, last = f"first(open, {tcol})", f"last(close, {tcol})"
        else:
            first = f"(array_agg(open ORDER BY {tcol}))[1]"
            last = f"(array_agg(close ORDER BY {tcol} DESC))[1]"
        origin = _MONDAY_ORIGIN if timeframe == "1w" else _EPOCH_ORIGIN
        # Volumes are summed in time order: a parallel plan (Gather Merge sorted by bucket only)
        # would otherwise add them in whatever order its workers deliver, and the float sum
        # would differ in its last digits from one answer (or /export) to the next.
        sql = (
            f"SELECT date_bin($7::interval, {tcol}, $8::timestamptz) AS b, {first}, max(high),"
            f" min(low), {last}, sum(volume ORDER BY {tcol}) FROM {relation}"
            f" WHERE {_SERIES} AND {tcol} >= $4 AND {tcol} < $5 GROUP BY b ORDER BY b LIMIT $6"
        )
        args += [timedelta(milliseconds=tf_ms(timeframe)), origin]
    return sql, args


async def select_bars(conn: asyncpg.Connection, mode: str, series: Series, timeframe: str, start_ms: int,
                      end_ms: int, limit: int) -> list[Bar]:
    """Bars ``[ts_ms, o, h, l, c, v]`` of ``timeframe`` with ``start_ms <= ts < end_ms``,
    ascending, at most ``limit`` (the first ones from ``start_ms``)."""
    query = bars_query(mode, series, timeframe, start_ms, end_ms, limit)
    if query is None:
        return []
    rows = await conn.fetch(query[0], *query[1])
    return [[_ms(r[0]), r[1], r[2], r[3], r[4], r[5]] for r in rows]


# --- Keeping continuous aggregates fresh ------------------------------------------------------
@dataclass(frozen=True)
class AggregateState:
    """A continuous aggregate's watermark and refresh policy, as TimescaleDB reports them."""

    view: str
    #: End of the materialized part in ms (rows before it are read from the materialization);
    #: None when nothing was ever materialized.
    watermark_ms: int | None
    #: The oldest time the refresh policy's next run is sure to cover; None without a policy.
    policy_covers_from_ms: int | None


_STATE_SQL = """
SELECT v.name,
       _timescaledb_functions.cagg_watermark(ca.mat_hypertable_id) AS watermark_us,
       (extract(epoch FROM now() - (j.config->>'start_offset')::interval + j.schedule_interval)
        * 1000)::bigint AS policy_from_ms
FROM unnest($1::text[]) AS v(name)
JOIN _timescaledb_catalog.continuous_agg ca
  ON format('%I.%I', ca.user_view_schema, ca.user_view_name)::regclass = to_regclass(v.name)
LEFT JOIN timescaledb_information.jobs j
  ON j.proc_name = 'policy_refresh_continuous_aggregate'
 AND (j.config->>'mat_hypertable_id')::int = ca.mat_hypertable_id
"""
#: cagg_watermark() answers the smallest timestamp (in µs) until something is materialized.
_NO_WATERMARK_US = -210_866_803_200_000_000


async def aggregate_states(conn: asyncpg.Connection) -> dict[str, AggregateState]:
    """Watermark and policy of each continuous aggregate visible on ``search_path``."""
    out: dict[str, AggregateState] = {}
    for r in await conn.fetch(_STATE_SQL, [view for _, view in CAGGS]):
        wm = r["watermark_us"]
        out[r["name"]] = AggregateState(
            view=r["name"],
            watermark_ms=None if wm is None or wm <= _NO_WATERMARK_US else wm // 1000,
            policy_covers_from_ms=r["policy_from_ms"],
        )
    return out


def plan_refresh(
    state: AggregateState, timeframe: str, start_ms: int, end_ms: int
) -> tuple[int | None, int] | None:
    """The window to refresh after 1m bars in ``[start_ms, end_ms)`` were written, or None.

    The touched window is widened to the aggregate's buckets. Buckets at or after the watermark
    are answered by real-time aggregation; when the refresh policy's next run covers them too,
    nothing needs doing. Otherwise the window is refreshed now, and it reaches back to the
    watermark (or to the beginning when nothing was materialized yet) when it starts after it:
    a refresh moves the watermark to its end, and the watermark must never pass over data that
    was not materialized, or that data would vanish from the aggregate.
    """
    lo, hi = bucket_start(start_ms, timeframe), bucket_ceil(end_ms, timeframe)
    wm, policy_from = state.watermark_ms, state.policy_covers_from_ms
    if wm is None or lo >= wm:
        if policy_from is not None and lo >= policy_from:
            return None
        return (wm, hi)
    return (lo, hi)


async def refresh_window(
    conn: asyncpg.Connection, mode: str, start_ms: int, end_ms: int
) -> list[tuple[str, int | None, int]]:
    """Bring every continuous aggregate up to date after 1m bars in ``[start_ms, end_ms)`` were
    written (late corrections, backfills). No-op in plain mode. Runs the refreshes in hierarchy
    order, each over the window ``plan_refresh`` chooses; returns ``(view, from_ms, to_ms)`` of
    each refresh made. Must run outside a transaction (TimescaleDB refuses otherwise)."""
    if not has_aggregates(mode) or end_ms <= start_ms:
        return []
    if conn.is_in_transaction():
        raise RuntimeError("refresh_window must run outside a transaction")
    states = await aggregate_states(conn)
    done: list[tuple[str, int | None, int]] = []
    for timeframe, view in CAGGS:
        state = states.get(view)
        if state is None:
            raise LookupError(f"continuous aggregate {view} not found on search_path")
        window = plan_refresh(state, timeframe, start_ms, end_ms)
        if window is None:
            continue
        await _refresh(conn, view, window[0], window[1])
        done.append((view, window[0], window[1]))
    if done:
        log.debug("refreshed %s for [%s, %s)", [d[0] for d in done], start_ms, end_ms)
    return done


async def refresh_all(conn: asyncpg.Connection, mode: str, end_ms: int | None = None) -> None:
    """Materialize every continuous aggregate from the beginning up to ``end_ms`` (or all data),
    in hierarchy order. For operators and benchmarks; no-op in plain mode."""
    if mode != "timescale":
        return
    for timeframe, view in CAGGS:
        await _refresh(conn, view, None, None if end_ms is None else bucket_start(end_ms, timeframe))


async def _refresh(conn: asyncpg.Connection, view: str, lo: int | None, hi: int | None) -> None:
    # A simple-protocol CALL with literals: TimescaleDB refuses the refresh inside a transaction
    # block, which an extended-protocol pipeline can count as.
    def lit(ms: int | None) -> str:
        return "NULL" if ms is None else f"'{_dt(ms).isoformat()}'::timestamptz"

    await conn.execute(f"CALL refresh_continuous_aggregate('{view}', {lit(lo)}, {lit(hi)})")


# --- Time conversions (exact integer milliseconds) -------------------------------------------
def _dt(ms: int) -> datetime:
    return _EPOCH_DT + timedelta(milliseconds=ms)


def _ms(value: datetime) -> int:
    return (value - _EPOCH_DT) // timedelta(milliseconds=1)

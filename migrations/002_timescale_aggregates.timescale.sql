-- TimescaleDB mode only: ohlcv_1m becomes a hypertable and every stored timeframe above 1m is a
-- hierarchical continuous aggregate, read with real-time aggregation (materialized_only = false).
--
--   ohlcv_1m -> ohlcv_5m -> ohlcv_15m -> ohlcv_1h -> ohlcv_4h
--                                              \-> ohlcv_1d -> ohlcv_1w
--
-- Each step is a fixed-width bucket that is a whole multiple of its parent's (5x, 3x, 4x, 4x, 24x,
-- 7x), as TimescaleDB requires of a continuous aggregate built on another one. time_bucket's
-- default origin is Monday 2000-01-03, so 1w buckets start Monday 00:00 UTC and every other bucket
-- is aligned to the UNIX epoch. Timeframes without an aggregate (3m, 30m, 2h, 6h, 12h) are
-- aggregated at query time from the nearest one (services/bars/aggregates.py).
--
-- Placeholders (config, see docs/timescaledb.md): TIMESCALE_CHUNK_INTERVAL,
-- TIMESCALE_REFRESH_LOOKBACK, TIMESCALE_REFRESH_SCHEDULE, TIMESCALE_COMPRESSION_AFTER and
-- TIMESCALE_RETENTION_AFTER (the last two: empty = no policy). Every statement is idempotent.

SELECT create_hypertable(
    'ohlcv_1m',
    by_range('ts', INTERVAL '{{TIMESCALE_CHUNK_INTERVAL}}'),
    if_not_exists => true,
    migrate_data => true
);

CREATE MATERIALIZED VIEW IF NOT EXISTS ohlcv_5m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT market, provider, symbol, time_bucket(INTERVAL '5 minutes', ts) AS bucket,
       first(open, ts) AS open, max(high) AS high, min(low) AS low,
       last(close, ts) AS close, sum(volume) AS volume
FROM ohlcv_1m
GROUP BY market, provider, symbol, time_bucket(INTERVAL '5 minutes', ts)
WITH NO DATA;

CREATE MATERIALIZED VIEW IF NOT EXISTS ohlcv_15m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT market, provider, symbol, time_bucket(INTERVAL '15 minutes', bucket) AS bucket,
       first(open, bucket) AS open, max(high) AS high, min(low) AS low,
       last(close, bucket) AS close, sum(volume) AS volume
FROM ohlcv_5m
GROUP BY market, provider, symbol, time_bucket(INTERVAL '15 minutes', bucket)
WITH NO DATA;

CREATE MATERIALIZED VIEW IF NOT EXISTS ohlcv_1h
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT market, provider, symbol, time_bucket(INTERVAL '1 hour', bucket) AS bucket,
       first(open, bucket) AS open, max(high) AS high, min(low) AS low,
       last(close, bucket) AS close, sum(volume) AS volume
FROM ohlcv_15m
GROUP BY market, provider, symbol, time_bucket(INTERVAL '1 hour', bucket)
WITH NO DATA;

CREATE MATERIALIZED VIEW IF NOT EXISTS ohlcv_4h
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT market, provider, symbol, time_bucket(INTERVAL '4 hours', bucket) AS bucket,
       first(open, bucket) AS open, max(high) AS high, min(low) AS low,
       last(close, bucket) AS close, sum(volume) AS volume
FROM ohlcv_1h
GROUP BY market, provider, symbol, time_bucket(INTERVAL '4 hours', bucket)
WITH NO DATA;

CREATE MATERIALIZED VIEW IF NOT EXISTS ohlcv_1d
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT market, provider, symbol, time_bucket(INTERVAL '1 day', bucket) AS bucket,
       first(open, bucket) AS open, max(high) AS high, min(low) AS low,
       last(close, bucket) AS close, sum(volume) AS volume
FROM ohlcv_1h
GROUP BY market, provider, symbol, time_bucket(INTERVAL '1 day', bucket)
WITH NO DATA;

CREATE MATERIALIZED VIEW IF NOT EXISTS ohlcv_1w
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT market, provider, symbol, time_bucket(INTERVAL '1 week', bucket) AS bucket,
       first(open, bucket) AS open, max(high) AS high, min(low) AS low,
       last(close, bucket) AS close, sum(volume) AS volume
FROM ohlcv_1d
GROUP BY market, provider, symbol, time_bucket(INTERVAL '1 week', bucket)
WITH NO DATA;

-- Refresh policies. end_offset is one bucket, so a policy never materializes a forming bucket (the
-- newest buckets come from real-time aggregation); start_offset is the configured look-back, but
-- at least three buckets (TimescaleDB wants the window to cover two buckets or more). Writes older
-- than the look-back are refreshed explicitly by services.bars.aggregates.refresh_window.
SELECT add_continuous_aggregate_policy(
    view_name, start_offset => greatest(INTERVAL '{{TIMESCALE_REFRESH_LOOKBACK}}', 3 * width),
    end_offset => width, schedule_interval => INTERVAL '{{TIMESCALE_REFRESH_SCHEDULE}}',
    if_not_exists => true)
FROM (VALUES ('ohlcv_5m'::regclass, INTERVAL '5 minutes'), ('ohlcv_15m', INTERVAL '15 minutes'),
             ('ohlcv_1h', INTERVAL '1 hour'), ('ohlcv_4h', INTERVAL '4 hours'),
             ('ohlcv_1d', INTERVAL '1 day'), ('ohlcv_1w', INTERVAL '1 week')) AS c(view_name, width);

-- Optional compression and retention of the 1m hypertable (off while the setting is empty).
DO $$
BEGIN
    IF '{{TIMESCALE_COMPRESSION_AFTER}}' <> '' THEN
        ALTER TABLE ohlcv_1m SET (timescaledb.compress,
            timescaledb.compress_segmentby = 'market, provider, symbol',
            timescaledb.compress_orderby = 'ts');
        PERFORM add_compression_policy('ohlcv_1m', INTERVAL '{{TIMESCALE_COMPRESSION_AFTER}}',
                                       if_not_exists => true);
    END IF;
    IF '{{TIMESCALE_RETENTION_AFTER}}' <> '' THEN
        PERFORM add_retention_policy('ohlcv_1m', INTERVAL '{{TIMESCALE_RETENTION_AFTER}}',
                                     if_not_exists => true);
    END IF;
END
$$;

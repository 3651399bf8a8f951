-- 1-minute bars: the one table every timeframe is derived from.
CREATE TABLE IF NOT EXISTS ohlcv_1m (
    market   text NOT NULL,
    provider text NOT NULL,
    symbol   text NOT NULL,
    ts       timestamptz NOT NULL,
    open     double precision NOT NULL,
    high     double precision NOT NULL,
    low      double precision NOT NULL,
    close    double precision NOT NULL,
    volume   double precision NOT NULL,
    PRIMARY KEY (market, provider, symbol, ts)
);

-- Gap ledger: ranges of the 1m series fetched from the provider and found complete, [start_ms, end_ms).
-- A range covered here with no rows in ohlcv_1m is a hole the provider itself has (verified empty).
CREATE TABLE IF NOT EXISTS fetched_ranges (
    market     text NOT NULL,
    provider   text NOT NULL,
    symbol     text NOT NULL,
    start_ms   bigint NOT NULL,
    end_ms     bigint NOT NULL,
    fetched_at timestamptz NOT NULL DEFAULT now(),
    CHECK (end_ms > start_ms)
);
CREATE INDEX IF NOT EXISTS fetched_ranges_series ON fetched_ranges (market, provider, symbol, start_ms);

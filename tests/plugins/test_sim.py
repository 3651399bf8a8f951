"""The sim market: deterministic, gap-free, market-like (trends, volatility regimes, volume that
follows volatility), and its coarse pages equal the aggregation of minutes."""

from __future__ import annotations

import statistics

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from core.errors import UnknownSymbol
from core.timeframes import DAY_MS, HOUR_MS, MINUTE_MS, resample
from plugins.sim import DECIMALS, HISTORY_START_MS, SYMBOLS, SimPlugin, _price, closed_bars, round6, sim_bar
from tests.support.plugin_kit import plugin_settings

T0 = 1_700_006_400_000  # a day boundary
SETTINGS = plugin_settings()


def test_closed_bars_equal_sim_bar_minute_by_minute() -> None:
    bars = closed_bars(42, "SIMA/USD", T0, T0 + 90 * MINUTE_MS)
    assert len(bars) == 90
    assert bars == [sim_bar(42, "SIMA/USD", T0 + i * MINUTE_MS) for i in range(90)]
    assert all(bars[i][4] == bars[i + 1][1] for i in range(89))  # each close is the next open
    assert all(b[3] <= min(b[1], b[4]) <= max(b[1], b[4]) <= b[2] for b in bars)


def test_prices_and_volumes_sit_on_the_symbols_steps() -> None:
    for symbol, (price_decimals, volume_decimals) in DECIMALS.items():
        for bar in closed_bars(42, symbol, T0, T0 + 300 * MINUTE_MS):
            assert all(round(p, price_decimals) == p for p in bar[1:5]), (symbol, bar)
            assert round(bar[5], volume_decimals) == bar[5] and bar[5] > 0, (symbol, bar)


async def test_daily_and_weekly_candles_look_like_a_market() -> None:
    """Not ~94-106 for four years with near-identical volume: the price trends far from its base,
    daily ranges change with volatility regimes, and volume follows the range."""
    hourly = [_price(42, "SIM/USD", m) for m in range(HISTORY_START_MS // MINUTE_MS, T0 // MINUTE_MS + 365 * 1440, 60)]
    assert max(hourly) / min(hourly) > 1.4  # trends over months
    weekly = [hourly[i + 168] / hourly[i] - 1 for i in range(0, len(hourly) - 168, 168)]
    assert max(weekly) > 0.05 and min(weekly) < -0.05 and statistics.pstdev(weekly) > 0.02
    plugin = SimPlugin("sim", settings=SETTINGS)
    days = await plugin.fetch_ohlcv("SIM/USD", "1d", T0, 120)
    assert len(days) == 120
    ranges = [(b[2] - b[3]) / b[1] for b in days]
    deciles = statistics.quantiles(ranges, n=10)
    assert deciles[-1] / deciles[0] > 2  # calm and busy regimes
    assert statistics.correlation(ranges, [b[5] for b in days]) > 0.3  # volume follows volatility
    assert days == await SimPlugin("sim", settings=SETTINGS).fetch_ohlcv("SIM/USD", "1d", T0, 120)  # deterministic


def test_closed_bars_keep_the_values_of_sim_bar_over_a_long_page() -> None:
    """closed_bars inlines the price model and the rounding: a day of every symbol, bar for bar."""
    for symbol in SYMBOLS:
        bars = closed_bars(7, symbol, T0, T0 + DAY_MS)
        assert bars[::37] == [sim_bar(7, symbol, T0 + i * MINUTE_MS) for i in range(0, 1440, 37)]
        assert all(bars[i][4] == bars[i + 1][1] for i in range(1439))


@given(st.one_of(
    st.floats(min_value=0.0, max_value=1e9, allow_nan=False),
    # exact and nearly exact halves of the 6th decimal
    st.integers(0, 10**15).map(lambda k: (k + 0.5) / 1e6),
))
@example(0.0000005)
@example(2.6750005)
@example(100.0000015)
def test_round6_is_round_to_six_decimals(x: float) -> None:
    assert round6(x) == round(x, 6)


def test_the_forming_bar_becomes_the_closed_bar() -> None:
    ts = T0 + 17 * MINUTE_MS
    early, late = sim_bar(42, "SIM/USD", ts, ts + 1_000), sim_bar(42, "SIM/USD", ts, ts + MINUTE_MS)
    assert early[1] == late[1] and early[5] < late[5]
    assert late == sim_bar(42, "SIM/USD", ts)


def test_seed_and_symbol_change_the_series() -> None:
    a = closed_bars(42, "SIM/USD", T0, T0 + 10 * MINUTE_MS)
    assert a == closed_bars(42, "SIM/USD", T0, T0 + 10 * MINUTE_MS)
    assert a != closed_bars(7, "SIM/USD", T0, T0 + 10 * MINUTE_MS)


@pytest.mark.parametrize("timeframe", ["1h", "4h", "1d", "1w"])
async def test_coarse_pages_equal_the_aggregation_of_their_minutes(timeframe: str) -> None:
    plugin = SimPlugin("sim", settings=SETTINGS)
    got = await plugin.fetch_ohlcv("SIM/USD", timeframe, T0, 3)
    assert len(got) == 3
    end = got[-1][0] + {"1h": HOUR_MS, "4h": 4 * HOUR_MS, "1d": DAY_MS, "1w": 7 * DAY_MS}[timeframe]
    want = resample(closed_bars(42, "SIM/USD", int(got[0][0]), int(end)), timeframe)
    for g, w in zip(got, want, strict=True):
        assert g[:5] == w[:5]
        assert g[5] == pytest.approx(w[5])


async def test_history_starts_at_the_listing_date_and_unknown_symbols_fail() -> None:
    plugin = SimPlugin("sim", settings=SETTINGS)
    first = await plugin.fetch_ohlcv("SIM/USD", "1m", 0, 5)
    assert [b[0] for b in first] == [HISTORY_START_MS + i * MINUTE_MS for i in range(5)]
    with pytest.raises(UnknownSymbol):
        await plugin.fetch_ohlcv("NOPE/USD", "1m", T0, 5)

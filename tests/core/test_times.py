"""core/times.py: the one parser of client times (REST, WebSocket ``since``, CLI)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.times import (
    FORMAT_TEXT,
    MAX_MS,
    MIN_MS,
    NO_ZONE_TEXT,
    PLUS_TEXT,
    RANGE_TEXT,
    SECONDS_TEXT,
    TimeError,
    parse_time,
)

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
MESSAGES = {FORMAT_TEXT, SECONDS_TEXT, NO_ZONE_TEXT, PLUS_TEXT, f"out of range: must be {RANGE_TEXT}",
            "must be whole milliseconds (no fraction)", "must be a finite number of milliseconds"}


@pytest.mark.parametrize(("value", "ms"), [
    (T0, T0), (str(T0), T0), (f" {T0} ", T0), (float(T0), T0), ("1.7040672e12", T0),
    ("2024-01-01T00:00:00Z", T0), ("2024-01-01T00:00:00z", T0), ("2024-01-01T01:00:00+01:00", T0),
    ("2024-01-01T00:00:00.999Z", T0 + 999), (MIN_MS, MIN_MS), (MAX_MS - 1, MAX_MS - 1),
])
def test_times_that_are_taken(value: object, ms: int) -> None:
    assert parse_time(value) == ms


@pytest.mark.parametrize(("value", "said"), [
    (1_704_067_200, "looks like seconds"), ("1704067200", "looks like seconds"), (0, "looks like seconds"),
    (MIN_MS - 1, "looks like seconds"), (-1, "out of range"), (MAX_MS, "out of range"),
    ("1e20", "out of range"), ("1e999999999", "out of range"), ("9" * 5000, "out of range"),
    (1e300, "out of range"), ("1970-01-02T00:00:00Z", "out of range"),
    ("3000-01-01T00:00:00Z", "out of range"), ("0001-01-01T00:00:00+14:00", "out of range"),
    ("1704067200000.5", "whole milliseconds"), (1.5, "whole milliseconds"),
    (float("nan"), "finite"), (float("inf"), "finite"),
    ("2024-01-01", "must carry a zone"), ("2024-01-01T00:00", "must carry a zone"),
    ("soon", "integer milliseconds"), ("²", "integer milliseconds"), ("١٧٠٤٠٦٧٢٠٠٠٠٠", "integer milliseconds"),
    (True, "integer milliseconds"), (None, "integer milliseconds"), ([T0], "integer milliseconds"),
    # "+00:00" sent unencoded in a URL: the "+" arrives as a space (24.18)
    ("2024-01-01T00:00:00 00:00", "send it as %2B"), ("2024-01-01T00:00 01:00", "or use Z"),
    ("2024-01-01T00:00:00.5 0000", "%2B"), ("2024-01-01 00:00:00 05:30", "%2B"),
])
def test_times_that_are_refused_say_why(value: object, said: str) -> None:
    with pytest.raises(TimeError, match=said):
        parse_time(value)


@given(st.integers(MIN_MS, MAX_MS - 1))
def test_every_ms_in_range_round_trips_as_int_and_text(ms: int) -> None:
    assert parse_time(ms) == parse_time(str(ms)) == ms


@given(st.one_of(st.integers(), st.floats(), st.text(max_size=40)))
def test_anything_is_a_time_or_a_time_error(value: object) -> None:
    try:
        assert MIN_MS <= parse_time(value) < MAX_MS
    except TimeError as exc:  # one of the fixed messages: never built from the value
        assert str(exc) in MESSAGES

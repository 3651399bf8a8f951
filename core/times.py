"""Times a client sends (REST, WebSocket, CLI): one parser, one rule, one set of messages.

A time is integer milliseconds since the epoch, or ISO-8601 *with* a zone (``Z``, ``+00:00``).
A time without a zone (``2024-01-01``, ``2024-01-01T00:00``) is refused everywhere, as docs/api.md asks
for a zone: the same text means different instants on machines in different zones. Times before
1973-01-01 are refused: in milliseconds they are the first three years of the epoch, and an
integer that small is almost always seconds (``1704067200`` is 2024 in seconds, January 1970 in
milliseconds).
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import NoReturn

#: 1973-01-01T00:00:00Z: anything earlier is refused (and integers below it are seconds).
MIN_MS = 94_694_400_000
#: 3000-01-01T00:00:00Z (exclusive).
MAX_MS = 32_503_680_000_000
RANGE_TEXT = "between 1973-01-01T00:00:00Z and 3000-01-01T00:00:00Z (94694400000 to 32503679999999 ms)"
FORMAT_TEXT = "must be integer milliseconds since the epoch or ISO-8601 with a zone (e.g. 2024-01-01T00:00:00Z)"
SECONDS_TEXT = ("looks like seconds since the epoch (before 1973 in milliseconds); "
                "send milliseconds, i.e. seconds x 1000")
NO_ZONE_TEXT = "ISO-8601 times must carry a zone (e.g. 2024-01-01T00:00:00Z or +00:00)"
PLUS_TEXT = ("the zone's '+' arrived as a space: in a URL a '+' means a space, so send it as %2B "
             "(2024-01-01T00:00:00%2B00:00) or use Z (2024-01-01T00:00:00Z)")

_DIGITS = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
#: An ISO-8601 time whose "+hh:mm" zone lost its "+" to URL decoding ("...T00:00:00 00:00").
_LOST_PLUS = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9:.,]+ [0-9]{2}(:?[0-9]{2})?")


class TimeError(ValueError):
    """A time a client sent is wrong; the message says what is wrong, never echoing the value."""


def parse_time(value: object) -> int:
    """Integer ms (``int``, an integral ``float`` from JSON, or text) or ISO-8601 with a zone,
    as int ms within ``[MIN_MS, MAX_MS)``; raises :class:`TimeError`."""
    if isinstance(value, bool):
        raise TimeError(FORMAT_TEXT)
    if isinstance(value, int):
        return _checked(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TimeError("must be a finite number of milliseconds")
        if not value.is_integer():
            raise TimeError("must be whole milliseconds (no fraction)")
        return _checked(int(value)) if abs(value) < 1e18 else _out_of_range()
    if not isinstance(value, str):
        raise TimeError(FORMAT_TEXT)
    text = value.strip()
    if not text.isascii():  # "²" passes str.isdigit, and non-ASCII digits are not ours
        raise TimeError(FORMAT_TEXT)
    if _DIGITS.fullmatch(text):
        # Short enough that int() never reaches its digit limit; longer is out of range anyway.
        return _checked(int(text)) if len(text) <= 20 else _out_of_range()
    if _NUMBER.fullmatch(text):  # "1e20", "1.7e12", "1704067200000.5"
        return _from_decimal(text)
    return _from_iso(text)


def _from_decimal(text: str) -> int:
    try:
        number = Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - the pattern admits only numbers
        raise TimeError(FORMAT_TEXT) from exc
    # Compared without arithmetic (which overflows on "1e999999999"): digits before the point.
    if number.adjusted() > 13 or number.copy_abs() >= MAX_MS:
        _out_of_range()
    if number != number.to_integral_value():
        raise TimeError("must be whole milliseconds (no fraction)")
    return _checked(int(number))


def _from_iso(text: str) -> int:
    try:
        dt = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError as exc:
        raise TimeError(PLUS_TEXT if _LOST_PLUS.fullmatch(text) else FORMAT_TEXT) from exc
    if dt.tzinfo is None:
        raise TimeError(NO_ZONE_TEXT)
    try:
        ms = int(dt.timestamp() * 1000)
    except (OverflowError, OSError, ValueError):  # year 1 with a negative offset, and the like
        _out_of_range()
    if ms < MIN_MS or ms >= MAX_MS:
        _out_of_range()
    return ms


def _checked(ms: int) -> int:
    if 0 <= ms < MIN_MS:
        raise TimeError(SECONDS_TEXT)
    if not MIN_MS <= ms < MAX_MS:
        _out_of_range()
    return ms


def _out_of_range() -> NoReturn:
    raise TimeError(f"out of range: must be {RANGE_TEXT}")

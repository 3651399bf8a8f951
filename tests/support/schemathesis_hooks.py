"""Rules of the REST API that OpenAPI 3.0 cannot state, for schemathesis runs against the service.

A query's ``end`` must come after its ``start``, and ``/gaps`` takes at most
``BACKFILL_MAX_RANGE_DAYS`` (default 3660) days between them: one parameter's bound depends on
another's value, which a JSON schema cannot say (the document says it in ``end``'s description).
Without this, every generated ``/gaps`` and most ``/ohlcv`` requests are refused with 400 and
schemathesis reports "mostly rejected generated data". Use it with the CLI:

    SCHEMATHESIS_HOOKS=tests.support.schemathesis_hooks st run http://127.0.0.1:8000/api/v1/openapi.json
"""

from __future__ import annotations

from typing import Any

import schemathesis

from core.times import MAX_MS, TimeError, parse_time

#: The span a generated range is given when its own breaks the rules (one day, in ms).
SPAN_MS = 86_400_000
#: The longest range any endpoint takes (``/gaps``: BACKFILL_MAX_RANGE_DAYS' default).
MAX_SPAN_MS = 3660 * SPAN_MS


@schemathesis.hook
def map_query(ctx: Any, query: Any) -> Any:
    """A generated ``start``/``end`` pair out of order or too far apart becomes ``start`` and a
    day after it; any other query (a time the server must refuse anyway) is left as it is."""
    if not isinstance(query, dict) or "start" not in query or "end" not in query:
        return query
    try:
        start, end = parse_time(query["start"]), parse_time(query["end"])
    except TimeError:
        return query
    if start < end <= start + MAX_SPAN_MS:
        return query
    start = min(start, MAX_MS - 1 - SPAN_MS)
    return {**query, "start": start, "end": start + SPAN_MS}

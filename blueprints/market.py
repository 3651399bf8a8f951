"""REST endpoints of the market API (``/api/v1``): thin adapters over the services."""

from __future__ import annotations

import json

from quart import Blueprint, Request, Response, current_app, jsonify, request

from app_extensions.answer_bytes import Prepared, etag_matches, etag_of
from app_extensions.credentials import get_credentials
from app_extensions.resilience import get_resilience
from app_extensions.response_cache import PreparedResponse, get_response_cache
from app_extensions.services import get_services
from app_extensions.warmup import get_warmup
from blueprints.common import load_query
from blueprints.schemas import MarketQuery, OhlcvQuery, ProviderQuery, SymbolQuery
from core.errors import InvalidParameter
from core.metrics import DATA_SOURCE_ANSWERS
from core.timeframes import MINUTE_MS, now_ms
from core.types import Series
from services.bars.orchestrator import BarQuery, window
from services.bars.sources import LEDGER_SAFETY_MS
from services.bars.warmup import range_key

market_blueprint = Blueprint("market", __name__, url_prefix="/api/v1")
#: Schema instances are stateless; build them once rather than per request.
SCHEMAS = {s.__name__: s() for s in (MarketQuery, ProviderQuery, SymbolQuery, OhlcvQuery)}
CACHE_ANSWERS = DATA_SOURCE_ANSWERS.labels("cache")


@market_blueprint.get("/markets")
async def markets() -> Response:
    return jsonify({"markets": get_services(current_app).markets.markets()})


@market_blueprint.get("/providers")
async def providers() -> Response:
    q = load_query(SCHEMAS['MarketQuery'])
    markets = get_services(current_app).markets
    infos = markets.providers(q["market"])
    credentials = get_credentials(current_app)
    own = set()  # providers the caller's own stored credentials configure for them
    if credentials.may_apply():
        for p in infos:
            if not p.configured and await credentials.for_request(markets, q["market"], p.provider):
                own.add(p.provider)
    response = jsonify({"market": q["market"], "providers": [
        {"provider": p.provider, "requires_credentials": p.requires_credentials,
         "configured": p.configured or p.provider in own, "timeframes": p.timeframes} for p in infos
    ]})
    if own:
        response.headers["Cache-Control"] = "private"
    return response


@market_blueprint.get("/symbols")
async def symbols() -> Response:
    q = load_query(SCHEMAS['ProviderQuery'])
    markets = get_services(current_app).markets
    user = await get_credentials(current_app).for_request(markets, q["market"], q["provider"])
    found = await markets.symbols(q["market"], q["provider"], user)
    return jsonify({"market": q["market"], "provider": q["provider"], "symbols": found})


@market_blueprint.get("/ticker")
async def ticker() -> Response:
    q = load_query(SCHEMAS['SymbolQuery'])
    markets = get_services(current_app).markets
    user = await get_credentials(current_app).for_request(markets, q["market"], q["provider"])
    t, stale = await get_resilience(current_app).tickers.get(
        q["market"], q["provider"], q["symbol"], user)
    response = jsonify({"market": q["market"], "provider": q["provider"], "symbol": q["symbol"],
                        "ts": t.ts, "last": t.last, "bid": t.bid, "ask": t.ask, "stale": stale})
    if stale:
        response.headers["X-Data-Stale"] = "true"
    if user is not None:
        response.headers["Cache-Control"] = "private"
    return response


@market_blueprint.get("/ohlcv")
async def ohlcv() -> Response:
    app, req = current_app, request
    services = get_services(app)
    prepared = get_response_cache(app)
    hit = prepared.lookup(req.query_string)  # the same query, validated when it was kept
    if hit is not None:
        query, warm_key = hit.meta
        credentials = get_credentials(app)
        user = await credentials.for_request(services.markets, query.series.market, query.series.provider
                                             ) if credentials.may_apply() else None
        if user is None:  # only the shared path's answers are kept: a user's own key misses
            get_warmup(app).warmer.note_key(warm_key)
            CACHE_ANSWERS.inc()
            return _answer(req, hit, "cache")
    q = load_query(SCHEMAS['OhlcvQuery'])
    services.markets.check_provider(q["market"], q["provider"])
    series = Series(q["market"], q["provider"], q["symbol"])
    query = BarQuery(series, q["timeframe"], q["start"], q["end"], _limit(q["limit"]))
    generation = prepared.store.generation(series.key())
    user = await get_credentials(current_app).for_request(services.markets, series.market, series.provider)
    if user is None:
        get_warmup(current_app).warmer.note(query)  # counted for cache warming (memory only)
    answer = await (get_resilience(current_app).user_bars.get_bars(query, user) if user
                    else services.orchestrator.get_bars(query))
    head = {"market": series.market, "provider": series.provider, "symbol": series.symbol,
            "timeframe": q["timeframe"]}
    tail = {"partial": answer.partial, "next": answer.next}
    # Spliced rather than re-encoded: cached bars arrive as JSON already.
    payload = f'{json.dumps(head)[:-1]}, "bars": {answer.bars_json()}, {json.dumps(tail)[1:]}'.encode()
    source = ",".join(answer.sources)
    DATA_SOURCE_ANSWERS.labels(source).inc()  # a mix of four fixed names: bounded
    headers = {"X-Data-Source": source, "Content-Type": "application/json"}
    if user is not None:  # what the user's own key sees: never stored by a shared HTTP cache
        headers["Cache-Control"] = "private"
    if answer.incomplete:
        headers["X-Data-Incomplete"] = "true"
    if answer.backfill_job:
        headers["X-Backfill-Job"] = answer.backfill_job
    if answer.closed and not answer.incomplete:
        # An answer that queued a backfill is not kept: its job header belongs to this answer.
        kept = await _keep(query, payload, generation) if user is None and not answer.backfill_job else None
        if kept is not None:
            return _answer(request, kept, source)
        etag = etag_of(payload)
        headers["ETag"] = etag
        if etag_matches(request.headers.get("If-None-Match", ""), etag):
            return _not_modified(etag)
    return Response(payload, status=200, headers=headers)


async def _keep(query: BarQuery, body: bytes, generation: tuple[int, int]) -> Prepared | None:
    """Keep a closed answer's bytes in process when its range is settled (older than the minutes
    an exchange may still correct). A latest-bars query may look back past closures: any revision
    before its end drops it."""
    now = now_ms()
    a, b, _ = window(query, now)
    if b > now // MINUTE_MS * MINUTE_MS - LEDGER_SAFETY_MS:
        return None
    start = a if query.start is not None else 0
    return await get_response_cache(current_app).keep(
        request.query_string, query.series.key(), start, b, body, "cache", generation,
        meta=(query, range_key(query)))


def _answer(req: Request, entry: Prepared, source: str) -> Response:
    """A prepared answer in the encoding the client accepts; 304 when its ETag matches."""
    accept_encoding = if_none_match = b""
    for name, value in req.scope["headers"]:  # one pass for both headers
        if name == b"accept-encoding":
            accept_encoding = value
        elif name == b"if-none-match":
            if_none_match = value
    encoding = entry.encoding(accept_encoding.decode("latin-1"))
    body, headers = entry.variants[encoding]
    if if_none_match and etag_matches(if_none_match.decode("latin-1"), entry.etag):
        return _not_modified(headers["ETag"])
    if source != "cache":
        return PreparedResponse(body, status=200, headers={**headers, "X-Data-Source": source})
    return PreparedResponse.sent_as(body, entry.sent[encoding])


def _not_modified(etag: str) -> Response:
    not_modified = PreparedResponse(b"", status=304, headers={"ETag": etag})
    del not_modified.headers["Content-Type"]  # a 304 has no body (Quart adds text/html)
    return not_modified


def _limit(given: int) -> int:
    """``limit`` within the operator's ``OHLCV_DEFAULT_LIMIT`` / ``OHLCV_MAX_LIMIT`` (the schema
    holds docs/api.md's 500 and 5000; an operator may lower them)."""
    if "limit" not in request.args:
        return int(current_app.config["OHLCV_DEFAULT_LIMIT"])
    most = int(current_app.config["OHLCV_MAX_LIMIT"])
    if given > most:
        raise InvalidParameter(f"limit: at most {most}", details={"limit": [f"at most {most}"]})
    return given

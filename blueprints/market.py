"""REST endpoints of the market API (``/api/v1``): thin adapters over the services."""

from __future__ import annotations

import json

from quart import Blueprint, Request, Response, current_app, jsonify, request

from app_extensions.credentials import get_credentials
from app_extensions.prepared_answers import PreparedAnswer, etag_matches, etag_of
from app_extensions.response_cache import PreparedResponse, get_response_cache
from app_extensions.services import get_services
from blueprints.common import load_query
from blueprints.schemas import MarketQuery, OhlcvQuery, ProviderQuery, SymbolQuery
from core.errors import InvalidParameter
from core.metrics import DATA_SOURCE_ANSWERS
from core.types import Series
from services.bars.query import BarAnswer, BarQuery
from services.upstream.credentials import UserCredentials

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
    t, stale = await get_services(current_app).tickers.get(
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
    app, cache = current_app, get_response_cache(current_app)
    bars = get_services(app).ohlcv
    hit = cache.lookup(request.query_string)  # the same query, validated when it was kept
    if hit is not None:
        query, warm_key = hit.meta
        if await _user(query.series) is None:  # only the shared path's answers are kept
            bars.count_hit(warm_key)
            CACHE_ANSWERS.inc()
            return _answer(request, hit, "cache")
    q = load_query(SCHEMAS['OhlcvQuery'])
    get_services(app).markets.check_provider(q["market"], q["provider"])
    series = Series(q["market"], q["provider"], q["symbol"])
    query = BarQuery(series, q["timeframe"], q["start"], q["end"], _limit(q["limit"]))
    generation = cache.store.generation(series.key())
    user = await _user(series)
    got = await bars.answer(query, user)
    answer, source = got.answer, ",".join(got.answer.sources)
    payload = _payload(query, answer)
    DATA_SOURCE_ANSWERS.labels(source).inc()  # a mix of four fixed names: bounded
    if got.settled is not None:
        kept = await cache.keep(request.query_string, series.key(), *got.settled, payload, "cache",
                                generation, meta=(query, got.warm_key))
        if kept is not None:
            return _answer(request, kept, source)
    return _fresh(payload, answer, source, private=user is not None)


async def _user(series: Series) -> UserCredentials | None:
    """The caller's own credentials for the series' provider, or None (the shared path)."""
    credentials = get_credentials(current_app)
    if not credentials.may_apply():  # an anonymous request skips the look-up's coroutine
        return None
    return await credentials.for_request(get_services(current_app).markets, series.market,
                                         series.provider)


def _payload(query: BarQuery, answer: BarAnswer) -> bytes:
    """The answer's JSON, spliced rather than re-encoded: cached bars arrive as JSON already."""
    s = query.series
    head = {"market": s.market, "provider": s.provider, "symbol": s.symbol, "timeframe": query.timeframe}
    tail = {"partial": answer.partial, "next": answer.next}
    return f'{json.dumps(head)[:-1]}, "bars": {answer.bars_json()}, {json.dumps(tail)[1:]}'.encode()


def _fresh(payload: bytes, answer: BarAnswer, source: str, private: bool) -> Response:
    """An answer not kept by the response cache; a closed complete one carries an ETag (304)."""
    headers = {"X-Data-Source": source, "Content-Type": "application/json"}
    if private:  # what the user's own key sees: never stored by a shared HTTP cache
        headers["Cache-Control"] = "private"
    if answer.incomplete:
        headers["X-Data-Incomplete"] = "true"
    if answer.backfill_job:
        headers["X-Backfill-Job"] = answer.backfill_job
    if answer.closed and not answer.incomplete:
        etag = etag_of(payload)
        headers["ETag"] = etag
        if etag_matches(request.headers.get("If-None-Match", ""), etag):
            return _not_modified(etag)
    return Response(payload, status=200, headers=headers)


def _answer(req: Request, entry: PreparedAnswer, source: str) -> Response:
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

"""GET /api/v1/export on stored sim bars, through the real PostgreSQL and Redis: every format, the
same bars as /ohlcv for every timeframe, 409 / 202, the bar bound, ETag and 304, compression,
auth and the export rate-limit class."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import brotli
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from quart import Quart
from quart.typing import TestClientProtocol

from app import create_app
from app_extensions.auth import hash_key
from app_extensions.export import get_exporter
from core.timeframes import DAY_MS, MINUTE_MS, TIMEFRAMES, bucket_ceil
from core.types import Series
from plugins.sim import sim_bar
from services.bars import storage

SIM = Series("sim", "sim", "SIM/USD")
T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC, a Monday
DAYS = 15
END = T0 + DAYS * DAY_MS
BASE = "/api/v1/export?market=sim&provider=sim&symbol=SIM/USD"


async def seed(pg: asyncpg.Connection, start: int = T0, end: int = END, hole: tuple[int, int] | None = None) -> None:
    """Sim 1m bars of [start, end) stored and recorded complete (but for ``hole``)."""
    skip = hole or (0, 0)
    bars = [sim_bar(42, "SIM/USD", t) for t in range(start, end, MINUTE_MS) if not skip[0] <= t < skip[1]]
    ranges = [(start, skip[0]), (skip[1], end)] if hole else [(start, end)]
    await storage.upsert_1m_bars(pg, SIM, bars, ranges)


async def ohlcv_pages(client: TestClientProtocol, timeframe: str, start: int, end: int) -> list[list[float]]:
    bars: list[list[float]] = []
    nxt: int | None = start
    while nxt is not None:
        resp = await client.get("/api/v1/ohlcv?market=sim&provider=sim&symbol=SIM/USD"
                                f"&timeframe={timeframe}&start={nxt}&end={end}&limit=5000")
        assert resp.status_code == 200
        body = await resp.get_json()
        bars += body["bars"]
        nxt = body["next"]
    return bars


def rows_of(fmt: str, data: bytes) -> list[list[float]]:
    """The bars of an export body, as /ohlcv's arrays."""
    if fmt == "csv":
        lines = data.decode().splitlines()
        assert lines[0] == "ts,open,high,low,close,volume"
        return [[int(x) if i == 0 else float(x) for i, x in enumerate(line.split(","))] for line in lines[1:]]
    if fmt == "jsonl":
        return [[int(r[0]), *map(float, r[1:])] for r in map(json.loads, data.decode().splitlines())]
    table = pq.read_table(io.BytesIO(data)) if fmt == "parquet" else ipc.open_stream(data).read_all()
    assert table.schema.field("ts").type == pa.timestamp("ms", tz="UTC")
    assert all(table.schema.field(c).type == pa.float64() for c in ("open", "high", "low", "close", "volume"))
    assert table.schema.metadata[b"symbol"] == b"SIM/USD" and table.schema.metadata[b"market"] == b"sim"
    cols = table.to_pydict()
    ts = table.column("ts").cast(pa.int64()).to_pylist()
    return [[t, *vals] for t, *vals in zip(ts, cols["open"], cols["high"], cols["low"], cols["close"],
                                            cols["volume"], strict=True)]


CONTENT = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson",
           "parquet": "application/vnd.apache.parquet", "arrow": "application/vnd.apache.arrow.stream"}


@pytest.mark.parametrize("fmt", list(CONTENT))
async def test_every_format_holds_the_bars_of_ohlcv(client: TestClientProtocol, pg: asyncpg.Connection,
                                                    fmt: str) -> None:
    await seed(pg)
    await client.get("/api/v1/markets")  # the app has started (migrations ran)
    resp = await client.get(f"{BASE}&timeframe=1h&start={T0 + 1}&end={T0 + 3 * DAY_MS}&format={fmt}")
    assert resp.status_code == 200, await resp.get_data(as_text=False)
    assert resp.headers["Content-Type"] == CONTENT[fmt]
    assert resp.headers["Content-Disposition"] == (
        f'attachment; filename="sim_sim_SIM-USD_1h_20240101T0100Z_20240104T0000Z.{fmt}"')
    got = rows_of(fmt, await resp.get_data(as_text=False))
    assert len(got) == 71  # buckets that start at or after start: from 01:00
    assert got == await ohlcv_pages(client, "1h", T0 + 1, T0 + 3 * DAY_MS)
    head = await client.head(f"{BASE}&timeframe=1h&start={T0 + 1}&end={T0 + 3 * DAY_MS}&format={fmt}")
    assert head.status_code == 200 and head.headers["ETag"] == resp.headers["ETag"]
    assert not await head.get_data(as_text=False)


@pytest.mark.parametrize("timeframe", list(TIMEFRAMES))
async def test_bars_equal_ohlcv_for_every_timeframe(client: TestClientProtocol, pg: asyncpg.Connection,
                                                    timeframe: str) -> None:
    await seed(pg, T0, T0 + 22 * DAY_MS)  # the week of the range's end is stored whole
    start, end = T0 + 7 * MINUTE_MS, END - 13 * MINUTE_MS
    resp = await client.get(f"{BASE}&timeframe={timeframe}&start={start}&end={end}&format=parquet")
    assert resp.status_code == 200, await resp.get_data(as_text=False)
    got = rows_of("parquet", await resp.get_data(as_text=False))
    # /ohlcv's buckets too: those that start at or after start and before end, each whole.
    assert len(got) == (bucket_ceil(end, timeframe) - bucket_ceil(start, timeframe)) // TIMEFRAMES[timeframe]
    assert got == await ohlcv_pages(client, timeframe, start, end)


async def test_missing_minutes_answer_409_and_backfill_true_queues_them(
        client: TestClientProtocol, pg: asyncpg.Connection) -> None:
    hole = (T0 + DAY_MS, T0 + DAY_MS + 90 * MINUTE_MS)
    await seed(pg, T0, T0 + 2 * DAY_MS, hole=hole)
    url = f"{BASE}&timeframe=1h&start={T0}&end={T0 + 2 * DAY_MS}&format=csv"
    resp = await client.get(url)
    assert resp.status_code == 409
    error = (await resp.get_json())["error"]
    assert error["code"] == "range_not_stored"
    assert error["details"] == {"missing_minutes": 90, "missing": [list(hole)]}
    resp = await client.get(url + "&backfill=true")
    assert resp.status_code == 202
    job = await resp.get_json()
    assert set(job) == {"job_id", "status"} and job["status"] in ("queued", "running", "done")
    listed = await (await client.get(f"/api/v1/backfill/{job['job_id']}")).get_json()
    assert (listed["start"], listed["end"]) == hole
    # A minute stored by someone else (a live poller) is stored even where the ledger has a hole.
    await storage.upsert_1m_bars(pg, SIM, [sim_bar(42, "SIM/USD", t) for t in range(*hole, MINUTE_MS)])
    assert (await client.get(url)).status_code == 200


class HeldExport:
    """An export served through the app's ASGI interface whose client stops reading after the first
    body chunk (``started`` is set then) until ``go`` is set; ``leave()`` disconnects instead."""

    def __init__(self, app: Quart, url: str) -> None:
        parts = urlsplit(url)
        self.scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                      "scheme": "http", "path": parts.path, "raw_path": parts.path.encode(),
                      "query_string": parts.query.encode(), "root_path": "", "headers": [(b"host", b"localhost")],
                      "client": ("127.0.0.1", 1), "server": ("localhost", 80), "extensions": {}}
        self.started, self.go, self.gone = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self.status: int | None = None
        self.body = bytearray()
        self.task = asyncio.create_task(app(self.scope, self.receive, self.send))  # type: ignore[arg-type]
        self._request_sent = False

    async def receive(self) -> dict[str, Any]:
        if not self._request_sent:
            self._request_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")
            if not self.started.is_set():
                self.started.set()
                await self.go.wait()  # a slow client: the stream waits here, its slot held

    async def leave(self) -> None:
        """The client disconnects mid-stream."""
        self.gone.set()
        await self.task


async def test_export_max_concurrent_refuses_one_more_with_503_until_a_stream_ends(
        app_config: dict[str, Any], pg: asyncpg.Connection) -> None:
    app = create_app({**app_config, "EXPORT_MAX_CONCURRENT": 1})
    async with app.test_app():
        client = app.test_client()
        await seed(pg, T0, T0 + DAY_MS)
        url = f"{BASE}&start={T0}&end={T0 + DAY_MS}&format=csv"
        first = HeldExport(app, url)
        await first.started.wait()
        assert first.status == 200 and get_exporter(app).running == 1
        refused = await client.get(url)
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
        error = (await refused.get_json())["error"]
        assert error["code"] == "dependency_unavailable" and "EXPORT_MAX_CONCURRENT" in error["message"]
        # HEAD and 304 stream nothing, so they take no slot.
        head = await client.head(url)
        assert head.status_code == 200
        assert (await client.get(url, headers={"If-None-Match": head.headers["ETag"]})).status_code == 304
        first.go.set()  # the client reads on: the stream ends and gives its slot back
        await first.task
        assert first.status == 200 and len(rows_of("csv", bytes(first.body))) == 1440
        assert get_exporter(app).running == 0
        ok = await client.get(url)
        assert ok.status_code == 200 and len(rows_of("csv", await ok.get_data(as_text=False))) == 1440
        # A client that leaves mid-stream gives its slot back too.
        second = HeldExport(app, url)
        await second.started.wait()
        assert (await client.get(url)).status_code == 503
        await second.leave()
        assert get_exporter(app).running == 0
        again = await client.get(url)
        assert again.status_code == 200 and len(rows_of("csv", await again.get_data(as_text=False))) == 1440


async def test_backfill_true_counts_against_the_callers_queued_jobs(
        app_config: dict[str, Any], pg: asyncpg.Connection) -> None:
    """export?backfill=true queues as POST /backfill does: as the caller, so
    BACKFILL_MAX_QUEUED_PER_CLIENT applies and an overlapping range joins the queued job."""
    app = create_app({**app_config, "BACKFILL_RUNNER": False, "BACKFILL_MAX_QUEUED_PER_CLIENT": 1})
    async with app.test_app():
        client = app.test_client()
        first = f"{BASE}&timeframe=1h&start={T0}&end={T0 + DAY_MS}&format=csv&backfill=true"
        resp = await client.get(first)
        assert resp.status_code == 202
        job = await resp.get_json()
        same = await client.get(f"{BASE}&timeframe=1h&start={T0 + 3600_000}&end={T0 + DAY_MS}&format=csv"
                                "&backfill=true")
        assert same.status_code == 202 and (await same.get_json())["job_id"] == job["job_id"]
        other = f"{BASE}&timeframe=1h&start={T0 + 5 * DAY_MS}&end={T0 + 6 * DAY_MS}&format=csv&backfill=true"
        refused = await client.get(other)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert (await refused.get_json())["error"]["code"] == "too_many_jobs"
        # Another client has its own quota.
        theirs = await client.get(other, scope_base={"client": ("192.0.2.9", 1)})
        assert theirs.status_code == 202 and (await theirs.get_json())["job_id"] != job["job_id"]


async def test_more_bars_than_export_max_bars_is_a_400(app_config: dict[str, Any], pg: asyncpg.Connection) -> None:
    app = create_app({**app_config, "EXPORT_MAX_BARS": 1440})
    async with app.test_app():
        client = app.test_client()
        ok = await client.get(f"{BASE}&start={T0}&end={T0 + DAY_MS}&format=csv")
        assert ok.status_code == 409  # within the bound (nothing stored)
        resp = await client.get(f"{BASE}&start={T0}&end={T0 + DAY_MS + MINUTE_MS}&format=csv")
        assert resp.status_code == 400
        error = (await resp.get_json())["error"]
        assert error["code"] == "invalid_parameter" and "EXPORT_MAX_BARS" in error["message"]
        assert (await client.get(f"{BASE}&timeframe=1h&start={T0}&end={T0 + 60 * DAY_MS}&format=csv")
                ).status_code == 409


@pytest.mark.parametrize(("query", "field"), [
    ("&start=1704067200000&format=csv", "end"),
    ("&start=1704067200000&end=1704067100000&format=csv", "end"),
    ("&start=1704067200000&end=1704153600000&format=xlsx", "format"),
    ("&start=1704067200000&end=1704153600000", "format"),
    ("&start=1704067200000&end=1704153600000&format=csv&timeframe=7m", "timeframe"),
    ("&start=1704067200000&end=1704153600000&format=csv&backfill=maybe", "backfill"),
])
async def test_bad_parameters_are_400(client: TestClientProtocol, query: str, field: str) -> None:
    resp = await client.get(BASE + query)
    assert resp.status_code == 400
    assert field in (await resp.get_json())["error"]["details"]


async def test_unknown_provider_is_404(client: TestClientProtocol) -> None:
    resp = await client.get(f"/api/v1/export?market=sim&provider=nope&symbol=X&start={T0}&end={END}&format=csv")
    assert resp.status_code == 404 and (await resp.get_json())["error"]["code"] == "unknown_provider"


async def test_etag_304_and_a_revision_changes_it(client: TestClientProtocol, pg: asyncpg.Connection) -> None:
    await seed(pg, T0, T0 + DAY_MS)
    url = f"{BASE}&timeframe=5m&start={T0}&end={T0 + DAY_MS}&format=parquet"
    first = await client.get(url)
    etag = first.headers["ETag"]
    assert first.status_code == 200 and etag.startswith('"')
    again = await client.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.headers["ETag"] == etag and not await again.get_data(as_text=False)
    other = await client.get(url.replace("parquet", "arrow"), headers={"If-None-Match": etag})
    assert other.status_code == 200 and other.headers["ETag"] != etag
    bar = sim_bar(42, "SIM/USD", T0 + 600 * MINUTE_MS)
    bar[5] += 1.5  # the exchange corrected a volume
    await storage.upsert_1m_bars(pg, SIM, [bar])
    revised = await client.get(url, headers={"If-None-Match": etag})
    assert revised.status_code == 200 and revised.headers["ETag"] != etag
    rows = rows_of("parquet", await revised.get_data(as_text=False))
    assert rows[120][5] == round(rows_of("parquet", await first.get_data(as_text=False))[120][5] + 1.5, 8)


@pytest.mark.parametrize(("accept", "encoding"), [("gzip", "gzip"), ("br, gzip", "br"), ("", None)])
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_csv_and_jsonl_are_compressed_when_accepted(client: TestClientProtocol, pg: asyncpg.Connection,
                                                          accept: str, encoding: str | None, fmt: str) -> None:
    await seed(pg, T0, T0 + DAY_MS)
    url = f"{BASE}&start={T0}&end={T0 + DAY_MS}&format={fmt}"
    plain = await client.get(url, headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers and plain.headers["Vary"] == "Accept-Encoding"
    resp = await client.get(url, headers={"Accept-Encoding": accept})
    assert resp.headers.get("Content-Encoding") == encoding
    data = await resp.get_data(as_text=False)
    if encoding == "gzip":
        data = gzip.decompress(data)
    elif encoding == "br":
        data = brotli.decompress(data)
    assert data == await plain.get_data(as_text=False) and len(rows_of(fmt, data)) == 1440
    if encoding:
        assert resp.headers["ETag"] == plain.headers["ETag"][:-1] + f'-{encoding}"'
        again = await client.get(url, headers={"Accept-Encoding": accept, "If-None-Match": resp.headers["ETag"]})
        assert again.status_code == 304


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
async def test_parquet_and_arrow_are_never_compressed_on_the_wire(client: TestClientProtocol,
                                                                  pg: asyncpg.Connection, fmt: str) -> None:
    await seed(pg, T0, T0 + DAY_MS)
    resp = await client.get(f"{BASE}&start={T0}&end={T0 + DAY_MS}&format={fmt}",
                            headers={"Accept-Encoding": "br, gzip"})
    assert resp.status_code == 200 and "Content-Encoding" not in resp.headers
    data = await resp.get_data(as_text=False)
    assert len(rows_of(fmt, data)) == 1440
    if fmt == "parquet":
        meta = pq.ParquetFile(io.BytesIO(data)).metadata
        assert meta.row_group(0).column(1).compression == "ZSTD"


async def test_auth(app_config: dict[str, Any], pg: asyncpg.Connection) -> None:
    app = create_app({**app_config, "AUTH_ENABLED": True, "API_KEYS": [hash_key("k1")]})
    async with app.test_app():
        client = app.test_client()
        await seed(pg, T0, T0 + DAY_MS)
        url = f"{BASE}&start={T0}&end={T0 + DAY_MS}&format=csv"
        resp = await client.get(url)
        assert resp.status_code == 401 and (await resp.get_json())["error"]["code"] == "unauthorized"
        resp = await client.get(url, headers={"X-API-Key": "k1"})
        assert resp.status_code == 200 and len(rows_of("csv", await resp.get_data(as_text=False))) == 1440


async def test_the_export_rate_limit_class(app_config: dict[str, Any], pg: asyncpg.Connection) -> None:
    app = create_app({**app_config, "RATE_LIMITS": {"export": "2/60"}})
    async with app.test_app():
        client = app.test_client()
        url = f"{BASE}&start={T0}&end={T0 + DAY_MS}&format=csv"
        statuses = [(await client.get(url)).status_code for _ in range(3)]
        assert statuses == [409, 409, 429]
        refused = await client.get(url)
        assert refused.headers["X-RateLimit-Limit"] == "2" and "Retry-After" in refused.headers
        ohlcv = await client.get("/api/v1/ohlcv?market=sim&provider=sim&symbol=SIM/USD&limit=5")
        assert ohlcv.status_code == 200 and ohlcv.headers["X-RateLimit-Limit"] == "300"


async def test_openapi_documents_export(app: Quart) -> None:
    doc = await (await app.test_client().get("/api/v1/openapi.json")).get_json()
    op = doc["paths"]["/export"]["get"]
    assert {"200", "202", "304", "400", "409"} <= set(op["responses"])
    assert set(op["responses"]["200"]["content"]) == set(CONTENT.values())
    names = {p["name"] for p in op["parameters"]}
    assert {"market", "provider", "symbol", "timeframe", "start", "end", "format", "backfill"} <= names

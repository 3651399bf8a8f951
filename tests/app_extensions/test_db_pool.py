"""Database (app_extensions/db_pool.py): search_path is a startup parameter of each pooled
connection, so an acquire sends nothing before the caller's query, and a connection back from the
pool is on the app's schema again whatever its last user SET."""

from __future__ import annotations

import asyncio
from typing import Any

from quart import Quart

from app import create_app
from app_extensions.db_pool import get_database
from tests.support.tcp_proxy import TcpProxy

PROTOCOL_3 = 196608


class CountingProxy(TcpProxy):
    """Counts the client's Query and Sync messages (one round trip each) sent to PostgreSQL."""

    round_trips = 0

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        if dst.get_extra_info("peername")[1] != self.target[1]:
            return await super()._pipe(src, dst)  # server -> client: not counted
        buf, started = b"", False
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
                buf += data
                while True:
                    if not started:  # SSLRequest / StartupMessage: no type byte
                        if len(buf) < 8 or len(buf) < int.from_bytes(buf[:4], "big"):
                            break
                        started = int.from_bytes(buf[4:8], "big") == PROTOCOL_3
                        buf = buf[int.from_bytes(buf[:4], "big"):]
                        continue
                    if len(buf) < 5 or len(buf) < 1 + int.from_bytes(buf[1:5], "big"):
                        break
                    self.round_trips += buf[:1] in (b"Q", b"S")
                    buf = buf[1 + int.from_bytes(buf[1:5], "big"):]
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()


async def test_search_path_survives_the_pool_reset(app: Quart, db_schema: str) -> None:
    db = get_database(app)
    for _ in range(3):
        async with db.acquire() as conn:
            assert await conn.fetchval("SHOW search_path") == f"{db_schema},public"
            await conn.execute("SET search_path TO public")  # undone by the reset on release


async def test_an_acquire_costs_no_round_trip_of_its_own(app_config: dict[str, Any]) -> None:
    proxy = CountingProxy("127.0.0.1", 5432)
    await proxy.start()
    url = app_config["DATABASE_URL"].replace(":5432/", f":{proxy.port}/")
    application = create_app({**app_config, "DATABASE_URL": url, "DB_POOL_MIN": 1, "DB_POOL_MAX": 1})
    try:
        async with application.test_app():
            db = get_database(application)
            async with db.acquire() as conn:
                await conn.fetchval("SELECT 1")  # warm: the statement is prepared once
            before = proxy.round_trips
            for _ in range(10):
                async with db.acquire() as conn:
                    await conn.fetchval("SELECT 1")
            # Per acquire: the query, and the reset asyncpg sends when the connection goes back.
            assert proxy.round_trips - before == 10 * 2
    finally:
        await proxy.stop()

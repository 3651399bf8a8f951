"""Migrations: instances migrating one schema together apply each migration once, also where
sessions are shared (PGlite); a schema's migrations do not wait for another schema's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from app_extensions.migrations import ADVISORY_LOCK_ID, SCHEMA_LOCK, SCHEMA_UNLOCK, run_migrations
from config import TestingConfig
from services.bars import aggregates
from tests.conftest import DATABASE_URL
from tests.support.helpers import drop_schema
from tests.support.pglite.fixtures import timescale_url  # noqa: F401  (session fixture)


def cfg(schema: str, **extra: Any) -> dict[str, Any]:
    return {**TestingConfig().as_dict(), "DATABASE_SCHEMA": schema, **extra}


@pytest.fixture
async def other_schema(db_schema: str) -> AsyncIterator[str]:
    schema = f"{db_schema}_b"
    yield schema
    await drop_schema(DATABASE_URL, schema)


async def test_instances_sharing_one_session_migrate_once(timescale_url: str, uid: str) -> None:  # noqa: F811
    """PGlite's one session grants every advisory lock to every connection: the check that a
    migration is pending is made in the transaction that applies it (a duplicate key on
    schema_migrations before)."""
    schema = f"m_{uid}"
    config = cfg(schema, **aggregates.TIMESCALE_SETTINGS, STORAGE_MODE="timescale")
    conns = [await asyncpg.connect(timescale_url) for _ in range(2)]
    try:
        modes = await asyncio.gather(*(run_migrations(c, config) for c in conns))
        assert modes == ["timescale", "timescale"]
        rows = await conns[0].fetch(
            f'SELECT version, count(*) AS n FROM "{schema}".schema_migrations GROUP BY version')
        assert len(rows) >= 2 and all(r["n"] == 1 for r in rows), rows
    finally:
        await conns[0].execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        for c in conns:
            await c.close()


async def test_a_schema_migrates_while_another_schema_is_locked(db_schema: str, other_schema: str) -> None:
    """The lock is per schema: migrating ``other_schema`` does not wait for a session that holds
    ``db_schema``'s lock (every app start-up on the database queued behind one lock before), and
    migrating ``db_schema`` does."""
    holder, a, b = [await asyncpg.connect(DATABASE_URL) for _ in range(3)]
    try:
        await holder.execute(SCHEMA_LOCK, ADVISORY_LOCK_ID, db_schema)
        blocked = asyncio.create_task(run_migrations(a, cfg(db_schema)))
        assert await asyncio.wait_for(run_migrations(b, cfg(other_schema)), 30) == "plain"
        await asyncio.sleep(0.3)
        assert not blocked.done()
        await holder.execute(SCHEMA_UNLOCK, ADVISORY_LOCK_ID, db_schema)
        assert await asyncio.wait_for(blocked, 30) == "plain"
    finally:
        for c in (holder, a, b):
            await c.close()

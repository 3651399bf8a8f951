"""Versioned SQL migrations, applied once each, in order, under an advisory lock per schema.

Files in ``migrations/``: ``NNN_name.sql`` runs in every mode, ``NNN_name.timescale.sql`` only in
TimescaleDB mode, ``NNN_name.plain.sql`` only on plain PostgreSQL. ``{{NAME}}`` placeholders are
replaced by config values. The storage mode is ``STORAGE_MODE`` (``auto`` tries to create the
``timescaledb`` extension and falls back to plain PostgreSQL).
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
#: Arbitrary constant. Instances migrating the same schema take the advisory lock
#: (ADVISORY_LOCK_ID, hashtext(schema)), so migrations of other schemas (other deployments or test
#: runs on the same database) do not wait for them; creating the extension, which is database-wide,
#: takes (ADVISORY_LOCK_ID) for its transaction.
ADVISORY_LOCK_ID = 0x4D44_0001
SCHEMA_LOCK = "SELECT pg_advisory_lock($1, hashtext($2))"
SCHEMA_UNLOCK = "SELECT pg_advisory_unlock($1, hashtext($2))"
_PLACEHOLDER = re.compile(r"\{\{([A-Z_][A-Z0-9_]*)\}\}")


def migration_files(mode: str) -> list[tuple[int, str, Path]]:
    out = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        parts = path.name.split(".")
        variant = parts[1] if len(parts) == 3 else None
        if variant is not None and variant != mode:
            continue
        out.append((int(path.name.split("_", 1)[0]), path.name, path))
    return out


def render(sql: str, config: dict[str, Any]) -> str:
    return _PLACEHOLDER.sub(lambda m: str(config[m.group(1)]), sql)


async def _choose_mode(conn: asyncpg.Connection, wanted: str) -> str:
    if wanted == "plain":
        return "plain"
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_ID)
            # In public, whatever DATABASE_SCHEMA is (search_path names that schema first).
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb WITH SCHEMA public")
        return "timescale"
    except asyncpg.PostgresError as exc:
        if wanted == "timescale":
            raise
        log.info("timescaledb extension not available (%s): plain PostgreSQL mode", exc)
        return "plain"


async def run_migrations(conn: asyncpg.Connection, config: dict[str, Any]) -> str:
    """Apply pending migrations; returns the storage mode (``timescale`` or ``plain``).

    Each migration is applied, and recorded, in one transaction that first checks that it is not
    recorded yet: the schema's session lock alone does not make that check atomic where sessions
    are shared (PGlite's one session, where every advisory lock is granted; there a transaction
    holds the backend, so the check inside it is)."""
    schema = config["DATABASE_SCHEMA"]
    await conn.execute(SCHEMA_LOCK, ADVISORY_LOCK_ID, schema)
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}", public')
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version int PRIMARY KEY, name text NOT NULL, mode text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        recorded = await conn.fetchval("SELECT mode FROM schema_migrations ORDER BY version LIMIT 1")
        mode = recorded or await _choose_mode(conn, config["STORAGE_MODE"])
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, path in migration_files(mode):
            if version in done:
                continue
            sql = render(await asyncio.to_thread(path.read_text), config)
            async with conn.transaction():
                if await conn.fetchval("SELECT 1 FROM schema_migrations WHERE version = $1", version):
                    continue  # applied by another instance since ``done`` was read
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, mode) VALUES ($1, $2, $3)",
                    version, name, mode,
                )
            log.info("applied migration %s (%s mode)", name, mode)
        return mode
    finally:
        await conn.execute(SCHEMA_UNLOCK, ADVISORY_LOCK_ID, schema)

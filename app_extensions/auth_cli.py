"""``quart --app app:create_app api-key ...``: create, list, revoke and hash API keys.

``add NAME`` stores a new random key's sha256 digest in ``api_keys`` and prints the key once (it
is not stored); a name already held by an active key is refused, so ``revoke NAME`` revokes exactly
the key meant. ``list`` prints every key's name, id (the first 16 hex digits of its digest, as the
rate limiter names it), creation time and state. ``revoke NAME`` sets ``revoked_at`` (the name may
then be used again); ``hash KEY`` prints the digest to put in ``API_KEYS``.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import asyncpg
import click
from quart import Quart

from app_extensions.auth import hash_key
from app_extensions.migrations import run_migrations

T = TypeVar("T")
#: Serialises ``add`` across concurrent CLI runs (the name check and the insert).
_ADD_LOCK = 0x4D44_0002
#: Longest key name ``add`` takes: a name is a label for people (``list``, ``revoke``), not data.
MAX_NAME_LENGTH = 100


class NameTaken(Exception):
    """An active key already has this name."""


def check_name(ctx: click.Context | None, param: click.Parameter | None, name: str) -> str:
    """``add``'s NAME: 1 to ``MAX_NAME_LENGTH`` printable characters, not only spaces (an empty
    or blank name cannot be told apart in ``list`` nor revoked on purpose)."""
    if not name.strip():
        raise click.BadParameter("must not be empty (e.g. api-key add dashboard)")
    if len(name) > MAX_NAME_LENGTH:
        raise click.BadParameter(f"must be at most {MAX_NAME_LENGTH} characters, got {len(name)}")
    if not name.isprintable():
        raise click.BadParameter("must not hold control characters")
    return name


def init_auth_cli(app: Quart) -> None:
    @app.cli.group("api-key")
    def api_key() -> None:
        """Manage API keys (stored as sha256 digests in the api_keys table)."""

    async def _with_conn(work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        conn = await asyncpg.connect(app.config["DATABASE_URL"], timeout=10)
        try:
            await run_migrations(conn, app.config)
            return await work(conn)
        finally:
            await conn.close()

    def _execute(work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        try:
            return asyncio.run(_with_conn(work))
        except (OSError, asyncpg.PostgresError) as exc:
            raise click.ClickException(f"database: {exc}") from exc

    @api_key.command("add")
    @click.argument("name", callback=check_name)
    def add(name: str) -> None:
        """Create a key named NAME and print it (shown only this once)."""
        key = "md_" + secrets.token_urlsafe(32)

        async def insert(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _ADD_LOCK)
                if await conn.fetchval(
                    "SELECT 1 FROM api_keys WHERE name = $1 AND revoked_at IS NULL", name
                ):
                    raise NameTaken(name)
                await conn.execute("INSERT INTO api_keys (name, key_hash) VALUES ($1, $2)",
                                   name, hash_key(key))

        try:
            _execute(insert)
        except NameTaken:
            raise click.ClickException(
                f"an active key is already named {name!r}: pick another name, or revoke it first"
            ) from None
        click.echo(key)

    @api_key.command("list")
    def list_keys() -> None:
        """List the keys: name, id (digest prefix), created, state. Keys themselves are not stored."""

        async def select(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            return list(await conn.fetch(
                "SELECT name, key_hash, created_at, revoked_at FROM api_keys ORDER BY name, created_at"
            ))

        rows = _execute(select)
        if not rows:
            click.echo("no API keys (add one with: api-key add NAME)")
            return
        width = max(4, *(len(r["name"]) for r in rows))
        click.echo(f"{'NAME':<{width}}  {'ID':<16}  {'CREATED (UTC)':<19}  STATE")
        for r in rows:
            state = "active" if r["revoked_at"] is None else f"revoked {_utc(r['revoked_at'])}"
            click.echo(f"{r['name']:<{width}}  {r['key_hash'][:16]}  {_utc(r['created_at'])}  {state}")

    @api_key.command("revoke")
    @click.argument("name")
    def revoke(name: str) -> None:
        """Revoke the active key named NAME."""

        async def update(conn: asyncpg.Connection) -> str:
            return str(await conn.execute(
                "UPDATE api_keys SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL", name
            ))

        count = int(_execute(update).split()[-1])
        if not count:
            raise click.ClickException(f"no active key named {name!r}")
        click.echo(f"revoked {count} key(s) named {name}")

    @api_key.command("hash")
    @click.argument("key")
    def digest(key: str) -> None:
        """Print the sha256 digest of KEY, for API_KEYS."""
        click.echo(hash_key(key))


def _utc(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")

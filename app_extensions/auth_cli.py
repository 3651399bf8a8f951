"""``quart --app app:create_app api-key ...``: create, revoke and hash API keys.

``add NAME`` stores a new random key's sha256 digest in ``api_keys`` and prints the key once (it
is not stored); ``revoke NAME`` sets ``revoked_at``; ``hash KEY`` prints the digest to put in
``API_KEYS``.
"""

from __future__ import annotations

import asyncio
import secrets

import asyncpg
import click
from quart import Quart

from app_extensions.auth import hash_key
from app_extensions.migrations import run_migrations


def init_auth_cli(app: Quart) -> None:
    @app.cli.group("api-key")
    def api_key() -> None:
        """Manage API keys (stored as sha256 digests in the api_keys table)."""

    async def _run(sql: str, *args: object) -> str:
        conn = await asyncpg.connect(app.config["DATABASE_URL"], timeout=10)
        try:
            await run_migrations(conn, app.config)
            return str(await conn.execute(sql, *args))
        finally:
            await conn.close()

    def _execute(sql: str, *args: object) -> str:
        try:
            return asyncio.run(_run(sql, *args))
        except (OSError, asyncpg.PostgresError) as exc:
            raise click.ClickException(f"database: {exc}") from exc

    @api_key.command("add")
    @click.argument("name")
    def add(name: str) -> None:
        """Create a key named NAME and print it (shown only this once)."""
        key = "md_" + secrets.token_urlsafe(32)
        _execute("INSERT INTO api_keys (name, key_hash) VALUES ($1, $2)", name, hash_key(key))
        click.echo(key)

    @api_key.command("revoke")
    @click.argument("name")
    def revoke(name: str) -> None:
        """Revoke every active key named NAME."""
        status = _execute(
            "UPDATE api_keys SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL", name
        )
        count = int(status.split()[-1])
        if not count:
            raise click.ClickException(f"no active key named {name!r}")
        click.echo(f"revoked {count} key(s) named {name}")

    @api_key.command("hash")
    @click.argument("key")
    def digest(key: str) -> None:
        """Print the sha256 digest of KEY, for API_KEYS."""
        click.echo(hash_key(key))

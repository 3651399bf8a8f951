"""Quart CLI commands: ``quart --app app:create_app migrate`` (more are registered by services)."""

from __future__ import annotations

import asyncio

import asyncpg
import click
from quart import Quart

from app_extensions.migrations import run_migrations


def init_cli(app: Quart) -> None:
    @app.cli.command("migrate")
    def migrate() -> None:
        """Apply pending database migrations and print the storage mode."""

        async def _run() -> str:
            conn = await asyncpg.connect(app.config["DATABASE_URL"], timeout=10)
            try:
                return await run_migrations(conn, app.config)
            finally:
                await conn.close()

        try:
            mode = asyncio.run(_run())
        except (OSError, asyncpg.PostgresError) as exc:
            raise click.ClickException(f"migration failed: {exc}") from exc
        click.echo(f"migrations applied; storage mode: {mode}")

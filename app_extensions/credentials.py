"""Wires users' exchange credentials into the app: the store, the request-side look-up and the
``quart --app app:create_app credentials rotate-keys`` command.

With auth on, each API key is a user (``g.api_key_id``). ``for_request(market, provider)`` gives the
caller's own credentials for that provider (their requests then use their own plugin instance), or
None: auth off, no ``CREDENTIALS_KEYS``, a provider that takes none (``sim``), or none stored.
When PostgreSQL cannot be asked, the request goes on with the service's own (shared) instance,
logged and counted in ``credential_lookup_failures_total``: that instance only sees what every
user may see, so nothing leaks; the user gets the shared answer until PostgreSQL is back.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import click
from quart import Quart, current_app, g

from app_extensions.db_pool import Database
from app_extensions.migrations import run_migrations
from config import ConfigError
from core.errors import DataSourceError, Forbidden, PluginFeatureNotSupportedError, UnknownProvider
from core.metrics import CREDENTIAL_LOOKUP_FAILURES
from services.upstream.credentials import CredentialStore, UserCredentials, Vault, parse_keys, rotate_all
from services.upstream.market_service import MarketService

log = logging.getLogger(__name__)


class Credentials:
    """Owner of the credential store. Reach it with ``get_credentials(app)``."""

    def __init__(self, database: Database, app: Quart | None = None) -> None:
        self.database = database
        self.store: CredentialStore
        self.keys: list[str] = []
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Quart) -> None:
        try:
            self.keys = parse_keys(app.config["CREDENTIALS_KEYS"])
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        vault = Vault(self.keys) if self.keys else None
        self.store = CredentialStore(self.database, vault, float(app.config["CREDENTIALS_CACHE_TTL"]))
        app.extensions["credentials"] = self
        _init_cli(app, self)

    def require_user(self) -> str:
        """The caller's user id; 403 ``forbidden`` with auth off, 503 without ``CREDENTIALS_KEYS``."""
        auth = current_app.extensions.get("auth")
        user = getattr(g, "api_key_id", None)
        if auth is None or not auth.enabled or user is None:
            raise Forbidden("/credentials needs a user: turn API keys on (AUTH_ENABLED)")
        if not self.store.enabled:
            raise DataSourceError("credentials are not configured (CREDENTIALS_KEYS is unset)")
        return str(user)

    def market_of(self, markets: MarketService, provider: str) -> str:
        """The market whose providers include ``provider``; 404 ``unknown_provider``, or 400 for
        a provider that takes no credentials."""
        for entry in markets.markets():
            if provider in entry["providers"]:
                if not markets.check_provider(entry["market"], provider).accepts_credentials:
                    raise PluginFeatureNotSupportedError(
                        f"{provider} takes no credentials", details={"provider": ["takes no credentials"]})
                return str(entry["market"])
        raise UnknownProvider(f"unknown provider {provider!r}")

    def may_apply(self) -> bool:
        """Whether ``for_request`` may find credentials: the caller has an API key and the store
        is on (so an anonymous request skips the look-up's coroutine)."""
        return self.store.enabled and g.get("api_key_id") is not None

    async def for_request(
        self, markets: MarketService, market: str, provider: str
    ) -> UserCredentials | None:
        """The caller's own credentials for (market, provider), or None (see the module doc)."""
        user = g.get("api_key_id")  # (getattr raises and catches on every anonymous request)
        if user is None or not self.store.enabled:
            return None
        if not markets.check_provider(market, provider).accepts_credentials:
            return None
        try:
            return await self.store.for_user(str(user), provider)
        except DataSourceError as exc:
            CREDENTIAL_LOOKUP_FAILURES.inc()
            log.warning("credentials of a user for %s unavailable, using the shared instance: %s",
                        provider, exc.message)
            return None


def _init_cli(app: Quart, owner: Credentials) -> None:
    @app.cli.group("credentials")
    def credentials() -> None:
        """Users' exchange credentials (encrypted with CREDENTIALS_KEYS)."""

    @credentials.command("rotate-keys")
    def rotate_keys() -> None:
        """Re-encrypt every stored credential under the newest CREDENTIALS_KEYS key (the first).
        Run it after putting a new key first; then the old keys can be removed."""
        if not owner.keys:
            raise click.ClickException("CREDENTIALS_KEYS is unset")
        vault = Vault(owner.keys)

        async def _run() -> int:
            conn = await asyncpg.connect(app.config["DATABASE_URL"], timeout=10)
            try:
                await run_migrations(conn, app.config)
                return await rotate_all(conn, vault)
            finally:
                await conn.close()

        try:
            count = asyncio.run(_run())
        except (OSError, asyncpg.PostgresError, DataSourceError) as exc:
            raise click.ClickException(f"rotation failed: {exc}") from exc
        click.echo(f"re-encrypted {count} credential(s) under the newest key")


def get_credentials(app: Quart) -> Credentials:
    owner: Credentials = app.extensions["credentials"]
    return owner

"""Per-user exchange credentials, encrypted at rest.

Data access is plain async functions taking the connection first (as ``storage.py``); the
``CredentialStore`` service on top encrypts with ``Vault`` (``cryptography``'s ``MultiFernet``
over ``CREDENTIALS_KEYS``, newest key first: new tokens use the newest key, every listed key
still decrypts, ``rotate_all`` re-encrypts every row under the newest). Secrets never appear in
logs, reprs, errors or answers: only ``key_hint`` (the last four characters of the API key).

A token is bound to its row: the encrypted JSON holds the user and the provider, and a look-up
refuses a token whose binding is not the row's (a token copied to another user's or provider's
row in the database does not open there). Tokens written before the binding (no ``user`` inside)
stay readable; ``credentials rotate-keys`` re-encrypts them bound.

A user is an API key's id (``g.api_key_id``). Lookups of a user's credentials for a provider are
kept in memory for ``CREDENTIALS_CACHE_TTL`` seconds (a change made through another instance
applies within that time; one made through this instance at once).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import asyncpg
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from core.errors import DataSourceError
from core.types import to_ms

log = logging.getLogger(__name__)
_CACHE_MAX = 10_000


class Connections(Protocol):
    """What the store needs from the app's database owner (``Database``)."""

    def acquire(self) -> AbstractAsyncContextManager[asyncpg.Connection]: ...


@dataclass(frozen=True)
class UserCredentials:
    """One user's credentials for one provider (decrypted; never logged: see ``__repr__``)."""

    provider: str
    api_key: str = field(repr=False)
    secret: str = field(repr=False)
    password: str | None = field(default=None, repr=False)
    testnet: bool = False
    #: The user (API key id) whose credentials these are: their plugin instances are theirs.
    owner: str = ""

    def marker(self) -> str:
        """A stable hash of the credentials and testnet flag: the plugin instance's key."""
        blob = json.dumps([self.provider, self.api_key, self.secret, self.password, self.testnet])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def parse_keys(raw: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """``CREDENTIALS_KEYS`` (comma-separated or a JSON list, newest first) as a list of keys;
    raises ``ValueError`` on a key that is not a Fernet key (the message never holds the key)."""
    if not raw:
        return []
    items: Any = raw
    if isinstance(raw, str):
        text = raw.strip()
        items = json.loads(text) if text.startswith("[") else text.split(",")
    keys = [str(k).strip() for k in items if str(k).strip()]
    for i, key in enumerate(keys):
        try:
            Fernet(key)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"CREDENTIALS_KEYS: entry {i + 1} is not a Fernet key") from exc
    return keys


class Vault:
    """Encrypts and decrypts credential tokens with ``MultiFernet`` (the first key encrypts)."""

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ValueError("a Vault needs at least one key")
        self._fernet = MultiFernet([Fernet(k) for k in keys])

    def encrypt(self, secrets: dict[str, str | None], user_id: str | None = None,
                provider: str | None = None) -> bytes:
        """A token of ``secrets``, bound to ``user_id`` and ``provider`` when given."""
        bound = secrets if user_id is None else {**secrets, "user": user_id, "provider": provider}
        return self._fernet.encrypt(json.dumps(bound).encode())

    def open(self, token: bytes, user_id: str, provider: str) -> dict[str, Any]:
        """The secrets of the token stored for (``user_id``, ``provider``); raises
        ``DataSourceError`` when no key opens it or it is bound to another user or provider."""
        secrets = self.decrypt(token)
        if "user" in secrets and (secrets.get("user"), secrets.get("provider")) != (user_id, provider):
            raise DataSourceError("stored credentials are bound to another user or provider")
        return secrets

    def decrypt(self, token: bytes) -> dict[str, Any]:
        """The secrets of ``token``; raises ``DataSourceError`` when no configured key opens it."""
        try:
            value: dict[str, Any] = json.loads(self._fernet.decrypt(token))
        except InvalidToken as exc:
            raise DataSourceError("stored credentials cannot be decrypted with CREDENTIALS_KEYS") from exc
        return value

    def rotate(self, token: bytes) -> bytes:
        """``token`` re-encrypted under the newest key."""
        try:
            return self._fernet.rotate(token)
        except InvalidToken as exc:
            raise DataSourceError("stored credentials cannot be decrypted with CREDENTIALS_KEYS") from exc


def key_hint(api_key: str) -> str:
    """The last four characters of an API key (only asterisks for keys too short to hint)."""
    return "****" + api_key[-4:] if len(api_key) >= 12 else "****"


# --- Data access (connection first) --------------------------------------------------------------
async def upsert_credentials(
    conn: asyncpg.Connection, user_id: str, provider: str, token: bytes, hint: str, testnet: bool
) -> None:
    """Insert or replace the user's credentials for ``provider``."""
    await conn.execute(
        "INSERT INTO exchange_credentials (user_id, provider, token, key_hint, testnet)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, provider) DO UPDATE SET"
        " token = EXCLUDED.token, key_hint = EXCLUDED.key_hint, testnet = EXCLUDED.testnet,"
        " updated_at = now()", user_id, provider, token, hint, testnet)


async def select_token(
    conn: asyncpg.Connection, user_id: str, provider: str
) -> tuple[bytes, bool] | None:
    """(token, testnet) of the user's credentials for ``provider``, or None."""
    row = await conn.fetchrow("SELECT token, testnet FROM exchange_credentials"
                              " WHERE user_id = $1 AND provider = $2", user_id, provider)
    return None if row is None else (bytes(row["token"]), bool(row["testnet"]))


async def list_credentials(conn: asyncpg.Connection, user_id: str) -> list[dict[str, Any]]:
    """The user's credentials as docs/api.md lists them (no token, no secret), by provider."""
    rows = await conn.fetch("SELECT provider, testnet, key_hint, updated_at FROM exchange_credentials"
                            " WHERE user_id = $1 ORDER BY provider", user_id)
    return [{"provider": r["provider"], "testnet": r["testnet"], "key_hint": r["key_hint"],
             "updated_at": to_ms(r["updated_at"])} for r in rows]


async def delete_credentials(conn: asyncpg.Connection, user_id: str, provider: str) -> bool:
    """Delete the user's credentials for ``provider``; False when there were none."""
    status = await conn.execute("DELETE FROM exchange_credentials WHERE user_id = $1 AND provider = $2",
                                user_id, provider)
    return bool(status.endswith(" 1"))


def _rotated(vault: Vault, token: bytes, user_id: str, provider: str) -> bytes:
    """``token`` under the newest key; a token from before the binding comes out bound to its row."""
    secrets = vault.decrypt(token)
    if "user" in secrets:
        return vault.rotate(token)
    return vault.encrypt(secrets, user_id, provider)


async def rotate_all(conn: asyncpg.Connection, vault: Vault, batch: int = 500) -> int:
    """Re-encrypt every stored token under the newest key (binding the ones written before tokens
    carried their user and provider), in one transaction; returns rows."""
    done = 0
    async with conn.transaction():
        cursor: AsyncIterator[asyncpg.Record] = conn.cursor(
            "SELECT user_id, provider, token FROM exchange_credentials FOR UPDATE", prefetch=batch)
        updates = [(_rotated(vault, bytes(r["token"]), r["user_id"], r["provider"]), r["user_id"],
                    r["provider"]) async for r in cursor]
        await conn.executemany("UPDATE exchange_credentials SET token = $1"
                               " WHERE user_id = $2 AND provider = $3", updates)
        done = len(updates)
    return done


# --- Service ---------------------------------------------------------------------------------------
class CredentialStore:
    """Users' exchange credentials: store, list, delete, and look up (decrypted) for requests."""

    def __init__(self, db: Connections, vault: Vault | None, cache_ttl: float = 5.0) -> None:
        self.db = db
        #: None when ``CREDENTIALS_KEYS`` is unset: the feature is off (503 on ``/credentials``).
        self.vault = vault
        self.cache_ttl = cache_ttl
        self._cache: dict[tuple[str, str], tuple[float, UserCredentials | None]] = {}

    @property
    def enabled(self) -> bool:
        return self.vault is not None

    def _vault(self) -> Vault:
        if self.vault is None:
            raise DataSourceError("credentials are not configured (CREDENTIALS_KEYS is unset)")
        return self.vault

    async def put(self, user_id: str, creds: UserCredentials) -> None:
        """Store ``creds`` for the user, encrypted; replaces earlier ones for that provider."""
        token = self._vault().encrypt({"api_key": creds.api_key, "secret": creds.secret,
                                       "password": creds.password}, user_id, creds.provider)
        async with self.db.acquire() as conn:
            await upsert_credentials(conn, user_id, creds.provider, token, key_hint(creds.api_key),
                                     creds.testnet)
        self._cache[(user_id, creds.provider)] = (time.monotonic() + self.cache_ttl,
                                                  replace(creds, owner=user_id))

    async def list(self, user_id: str) -> list[dict[str, Any]]:
        """The user's credentials without secrets (``provider, testnet, key_hint, updated_at``)."""
        self._vault()
        async with self.db.acquire() as conn:
            return await list_credentials(conn, user_id)

    async def delete(self, user_id: str, provider: str) -> bool:
        """Forget the user's credentials for ``provider``; False when there were none."""
        self._vault()
        async with self.db.acquire() as conn:
            found = await delete_credentials(conn, user_id, provider)
        self._cache[(user_id, provider)] = (time.monotonic() + self.cache_ttl, None)
        return found

    async def for_user(self, user_id: str | None, provider: str) -> UserCredentials | None:
        """The user's decrypted credentials for ``provider``, or None (no user, none stored, or
        the feature off). Raises ``DataSourceError`` when PostgreSQL cannot be asked."""
        if user_id is None or self.vault is None:
            return None
        now = time.monotonic()
        hit = self._cache.get((user_id, provider))
        if hit is not None and hit[0] > now:
            return hit[1]
        async with self.db.acquire() as conn:
            row = await select_token(conn, user_id, provider)
        creds = None
        if row is not None:
            secrets = self.vault.open(row[0], user_id, provider)
            creds = UserCredentials(provider, str(secrets["api_key"]), str(secrets["secret"]),
                                    secrets.get("password"), row[1], owner=user_id)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[(user_id, provider)] = (now + self.cache_ttl, creds)
        return creds

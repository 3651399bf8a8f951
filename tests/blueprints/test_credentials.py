"""/api/v1/credentials: auth rules, storage encrypted at rest, listing without secrets, key rotation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from cryptography.fernet import Fernet
from quart import Quart

from app import create_app
from app_extensions.auth import hash_key
from config import ConfigError
from core.errors import DataSourceError
from services.upstream.credentials import Vault, parse_keys

ALICE, BOB = "alice-api-key-0001", "bob-api-key-00002"
SECRET = "s3cret-never-shown-anywhere"
API_KEY = "BINANCEKEY0000WXYZ"
BODY: dict[str, Any] = {"api_key": API_KEY, "secret": SECRET, "testnet": True}


def auth_config(app_config: dict[str, Any], keys: list[str] | None) -> dict[str, Any]:
    return {**app_config, "AUTH_ENABLED": True, "API_KEYS": [hash_key(ALICE), hash_key(BOB)],
            "API_KEYS_FROM_DB": False, "RATE_LIMIT_ENABLED": False,
            "CREDENTIALS_KEYS": ",".join(keys or [])}


@pytest.fixture
def key1() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture
async def app(app_config: dict[str, Any], key1: str) -> AsyncIterator[Quart]:
    application = create_app(auth_config(app_config, [key1]))
    async with application.test_app():
        yield application


async def test_auth_off_answers_403(app_config: dict[str, Any], key1: str) -> None:
    application = create_app({**app_config, "CREDENTIALS_KEYS": key1})
    async with application.test_app():
        client = application.test_client()
        for r in (await client.put("/api/v1/credentials/binance", json=BODY),
                  await client.get("/api/v1/credentials"),
                  await client.delete("/api/v1/credentials/binance")):
            assert r.status_code == 403
            assert (await r.get_json())["error"]["code"] == "forbidden"


async def test_without_keys_answers_503(app_config: dict[str, Any]) -> None:
    application = create_app(auth_config(app_config, None))
    async with application.test_app():
        r = await application.test_client().get("/api/v1/credentials", headers={"X-API-Key": ALICE})
        assert r.status_code == 503
        assert (await r.get_json())["error"]["code"] == "dependency_unavailable"
        r = await application.test_client().get("/api/v1/credentials")
        assert r.status_code == 401  # no key at all is still a 401


async def test_put_list_delete(app: Quart, pg: asyncpg.Connection,
                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client, alice, bob = app.test_client(), {"X-API-Key": ALICE}, {"X-API-Key": BOB}
    r = await client.put("/api/v1/credentials/binance", json=BODY, headers=alice)
    assert r.status_code == 204 and await r.get_data() == b""
    listed = await (await client.get("/api/v1/credentials", headers=alice)).get_json()
    [entry] = listed["credentials"]
    assert entry["provider"] == "binance" and entry["testnet"] is True
    assert entry["key_hint"] == "****WXYZ" and isinstance(entry["updated_at"], int)
    assert SECRET not in str(listed) and API_KEY not in str(listed)
    assert (await (await client.get("/api/v1/credentials", headers=bob)).get_json()) == {"credentials": []}
    token = await pg.fetchval("SELECT token FROM exchange_credentials")
    assert SECRET.encode() not in bytes(token) and API_KEY.encode() not in bytes(token)
    r = await client.delete("/api/v1/credentials/binance", headers=bob)  # bob has none
    assert r.status_code == 404 and (await r.get_json())["error"]["code"] == "not_found"
    assert (await client.delete("/api/v1/credentials/binance", headers=alice)).status_code == 204
    assert (await client.delete("/api/v1/credentials/binance", headers=alice)).status_code == 404
    assert not any(SECRET in rec.getMessage() or SECRET in str(rec.args) for rec in caplog.records)


@pytest.mark.parametrize(("provider", "body", "status", "code"), [
    ("nope", BODY, 404, "unknown_provider"),
    ("sim", BODY, 400, "invalid_parameter"),  # the sim market takes no credentials
    ("binance", {"secret": "x"}, 400, "invalid_parameter"),
    ("binance", {"api_key": "k", "secret": "s", "testnet": "maybe"}, 400, "invalid_parameter"),
])
async def test_bad_requests(app: Quart, provider: str, body: dict[str, Any], status: int,
                            code: str) -> None:
    r = await app.test_client().put(f"/api/v1/credentials/{provider}", json=body,
                                    headers={"X-API-Key": ALICE})
    assert r.status_code == status
    answer = await r.get_json()
    assert answer["error"]["code"] == code and SECRET not in str(answer)


def test_rotation_re_encrypts_under_the_newest_key(app_config: dict[str, Any], key1: str) -> None:
    """Sync: the CLI runs its own event loop, as ``quart ... credentials rotate-keys`` does."""

    async def put_two() -> None:
        application = create_app(auth_config(app_config, [key1]))
        async with application.test_app():
            client = application.test_client()
            for provider in ("binance", "kraken"):
                r = await client.put(f"/api/v1/credentials/{provider}", json=BODY,
                                     headers={"X-API-Key": ALICE})
                assert r.status_code == 204

    async def tokens() -> list[bytes]:
        conn = await asyncpg.connect(app_config["DATABASE_URL"])
        try:
            rows = await conn.fetch(f'SELECT token FROM "{app_config["DATABASE_SCHEMA"]}".exchange_credentials')
            return [bytes(r["token"]) for r in rows]
        finally:
            await conn.close()

    asyncio.run(put_two())
    key2 = Fernet.generate_key().decode()
    rotated = create_app(auth_config(app_config, [key2, key1]))  # the new key first
    result = rotated.test_cli_runner().invoke(args=["credentials", "rotate-keys"])
    assert result.exit_code == 0, result.output
    assert "re-encrypted 2 credential(s)" in result.output
    found = asyncio.run(tokens())
    only_new = Vault([key2])  # the old key can go now
    assert len(found) == 2 and all(only_new.decrypt(t)["secret"] == SECRET for t in found)
    with pytest.raises(DataSourceError, match="cannot be decrypted"):
        Vault([key1]).decrypt(found[0])


def test_keys_are_parsed_and_checked(key1: str) -> None:
    key2 = Fernet.generate_key().decode()
    assert parse_keys(f"{key1}, {key2}") == [key1, key2]
    assert parse_keys(f'["{key2}", "{key1}"]') == [key2, key1]
    assert parse_keys("") == []
    with pytest.raises(ValueError, match="entry 2 is not a Fernet key") as info:
        parse_keys(f"{key1},not-a-key")
    assert "not-a-key" not in str(info.value)


def test_a_bad_key_stops_the_start(app_config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="CREDENTIALS_KEYS"):
        create_app({**app_config, "CREDENTIALS_KEYS": "short"})


async def test_a_token_opens_only_in_its_own_row(app: Quart, app_config: dict[str, Any], key1: str) -> None:
    """Issue 23 (13): the ciphertext carries its user and provider. A token copied (by someone
    with write access to the table) to another user's row no longer gives that user its secrets:
    the look-up refuses it and the user's requests use the shared instance."""
    from app_extensions.credentials import get_credentials

    client = app.test_client()
    for user in (ALICE, BOB):
        r = await client.put("/api/v1/credentials/binance", json={**BODY, "secret": f"{user}-secret"},
                             headers={"X-API-Key": user})
        assert r.status_code == 204
    schema = app_config["DATABASE_SCHEMA"]
    alice, bob = hash_key(ALICE)[:16], hash_key(BOB)[:16]
    conn = await asyncpg.connect(app_config["DATABASE_URL"])
    try:
        await conn.execute(f'UPDATE "{schema}".exchange_credentials SET token ='
                           f' (SELECT token FROM "{schema}".exchange_credentials WHERE user_id = $1)'
                           " WHERE user_id = $2", alice, bob)
    finally:
        await conn.close()
    store = get_credentials(app).store
    store._cache.clear()
    assert (await store.for_user(alice, "binance")).secret == f"{ALICE}-secret"  # type: ignore[union-attr]
    with pytest.raises(DataSourceError, match="bound to another user"):
        await store.for_user(bob, "binance")


async def test_tokens_from_before_the_binding_stay_readable_until_rotated(
        app: Quart, app_config: dict[str, Any], key1: str) -> None:
    from app_extensions.credentials import get_credentials
    from services.upstream.credentials import rotate_all

    alice = hash_key(ALICE)[:16]
    legacy = Vault([key1]).encrypt({"api_key": API_KEY, "secret": SECRET, "password": None})
    conn = await asyncpg.connect(app_config["DATABASE_URL"])
    try:
        await conn.execute(f'SET search_path TO "{app_config["DATABASE_SCHEMA"]}"')
        await conn.execute("INSERT INTO exchange_credentials (user_id, provider, token, key_hint, testnet)"
                           " VALUES ($1, 'binance', $2, '****WXYZ', false)", alice, legacy)
        store = get_credentials(app).store
        assert (await store.for_user(alice, "binance")).secret == SECRET  # type: ignore[union-attr]
        assert await rotate_all(conn, Vault([key1])) == 1
        token = bytes(await conn.fetchval("SELECT token FROM exchange_credentials"))
    finally:
        await conn.close()
    assert Vault([key1]).decrypt(token) == {"api_key": API_KEY, "secret": SECRET, "password": None,
                                            "user": alice, "provider": "binance"}

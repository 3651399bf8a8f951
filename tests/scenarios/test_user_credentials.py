"""Per-user exchange credentials end to end, through the emulator's Alpaca side with accounts:
each user's own key reaches the exchange, entitlements (sip vs iex) never leak between users, a
wrong key is that user's 502 alone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from cryptography.fernet import Fernet
from quart import Quart
from quart.typing import TestClientProtocol

from app import create_app
from app_extensions.auth import hash_key
from app_extensions.services import get_services
from tests.support.exchange_emulator import ExchangeEmulator, fixtures
from tests.support.exchange_emulator.checks import NO_LEAKS

pytestmark = NO_LEAKS
emulator = fixtures.emulator
ALICE, BOB, CAROL, DAN = (f"{name}-api-key-000000" for name in ("alice", "bob", "carol", "dan"))
TICKER = "/api/v1/ticker?market=stocks&provider=alpaca&symbol=AAPL"
#: The emulator's accounts: key id -> (secret, plan). "op" is the service's own (configured) key.
ACCOUNTS = {"op-key": ("op-secret", "iex"), "alice-alpaca": ("alice-secret", "sip"),
            "bob-alpaca": ("bob-secret", "iex")}


@pytest.fixture
async def app(app_config: dict[str, Any], emulator: ExchangeEmulator) -> AsyncIterator[Quart]:
    emulator.alpaca.accounts = dict(ACCOUNTS)
    cfg = {**app_config, "AUTH_ENABLED": True, "API_KEYS_FROM_DB": False,
           "API_KEYS": [hash_key(k) for k in (ALICE, BOB, CAROL, DAN)], "RATE_LIMIT_ENABLED": False,
           "CREDENTIALS_KEYS": Fernet.generate_key().decode(),
           "PROVIDER_URLS": {"alpaca": emulator.url}, "ENABLED_MARKETS": "sim,stocks",
           "ALPACA_API_KEY_ID": "op-key", "ALPACA_API_SECRET_KEY": "op-secret",
           "PROVIDER_TIMEOUT": 1.0, "PROVIDER_RETRIES": 1, "PROVIDER_RETRY_MAX_WAIT": 0.05}
    application = create_app(cfg)
    async with application.test_app():
        yield application


async def store(client: TestClientProtocol, user: str, key_id: str, secret: str) -> None:
    r = await client.put("/api/v1/credentials/alpaca", headers={"X-API-Key": user},
                         json={"api_key": key_id, "secret": secret})
    assert r.status_code == 204


async def ticker(client: TestClientProtocol, user: str) -> tuple[int, Any]:
    r = await client.get(TICKER, headers={"X-API-Key": user})
    return r.status_code, await r.get_json()


async def test_each_user_reaches_the_exchange_with_their_own_key(
    app: Quart, emulator: ExchangeEmulator
) -> None:
    client = app.test_client()
    await store(client, ALICE, "alice-alpaca", "alice-secret")
    await store(client, BOB, "bob-alpaca", "bob-secret")
    for user, key_id in ((ALICE, "alice-alpaca"), (BOB, "bob-alpaca"), (DAN, "op-key")):
        emulator.alpaca.seen_keys.clear()
        status, _ = await ticker(client, user)
        assert status == 200
        assert set(emulator.alpaca.seen_keys) == {key_id}, (user, emulator.alpaca.seen_keys)
    # One instance per user's credentials, besides the shared one; none reused across users.
    keys = {k[2] for k in get_services(app).markets._instances if k[1] == "alpaca"}
    assert len(keys) == 3 and sum(k.startswith("user:") for k in keys) == 2


async def test_users_with_different_feeds_get_their_own_answers(app: Quart) -> None:
    client = app.test_client()
    await store(client, ALICE, "alice-alpaca", "alice-secret")  # a sip plan
    await store(client, BOB, "bob-alpaca", "bob-secret")  # an iex plan
    # Alice first: her sip quote is kept only under her own scope.
    (sa, alice), (sb, bob), (sd, dan) = [await ticker(client, u) for u in (ALICE, BOB, DAN)]
    assert sa == sb == sd == 200
    alice_spread, bob_spread = alice["ask"] - alice["bid"], bob["ask"] - bob["bid"]
    assert alice_spread < bob_spread / 2  # the consolidated (sip) quote is tighter
    assert (dan["bid"], dan["ask"]) == (bob["bid"], bob["ask"])  # the shared iex answer
    assert alice["stale"] is bob["stale"] is dan["stale"] is False


async def test_a_wrong_key_is_a_502_for_that_user_only(app: Quart, emulator: ExchangeEmulator) -> None:
    client = app.test_client()
    await store(client, ALICE, "alice-alpaca", "alice-secret")
    await store(client, CAROL, "alice-alpaca", "a-wrong-secret")
    for _ in range(8):  # more than BREAKER_FAILURE_THRESHOLD: a refused key must not trip it
        status, body = await ticker(client, CAROL)
        assert status == 502 and body["error"]["code"] == "provider_error"
        assert "a-wrong-secret" not in str(body)
    status, body = await ticker(client, ALICE)
    assert status == 200 and body["stale"] is False
    assert (await ticker(client, DAN))[0] == 200
    states = await get_services(app).breaker.states(["alpaca"])
    assert states == {"alpaca": "closed"}
    # Carol fixes her key: her next request uses a new instance with it.
    await store(client, CAROL, "bob-alpaca", "bob-secret")
    assert (await ticker(client, CAROL))[0] == 200


async def test_symbols_use_the_users_instance(app: Quart, emulator: ExchangeEmulator) -> None:
    client = app.test_client()
    await store(client, CAROL, "alice-alpaca", "a-wrong-secret")
    r = await client.get("/api/v1/symbols?market=stocks&provider=alpaca", headers={"X-API-Key": CAROL})
    assert r.status_code == 502
    r = await client.get("/api/v1/symbols?market=stocks&provider=alpaca", headers={"X-API-Key": DAN})
    assert r.status_code == 200 and "AAPL" in (await r.get_json())["symbols"]


OHLCV = ("/api/v1/ohlcv?market=stocks&provider=alpaca&symbol=AAPL&timeframe={tf}"
         "&start=2024-01-02T15:00:00Z&limit=30")


async def ohlcv(client: TestClientProtocol, user: str, tf: str = "1m") -> Any:
    r = await client.get(OHLCV.format(tf=tf), headers={"X-API-Key": user})
    assert r.status_code == 200, await r.get_data()
    return r, await r.get_json()


async def test_ohlcv_of_users_with_different_feeds_never_mix(app: Quart, emulator: ExchangeEmulator) -> None:
    client = app.test_client()
    await store(client, ALICE, "alice-alpaca", "alice-secret")  # sip
    await store(client, BOB, "bob-alpaca", "bob-secret")  # iex
    emulator.alpaca.seen_keys.clear()
    r, alice = await ohlcv(client, ALICE)  # first: were it cached or stored, others would get it
    assert r.headers["Cache-Control"] == "private" and r.headers["X-Data-Source"] == "provider"
    assert set(emulator.alpaca.seen_keys) == {"alice-alpaca"}
    _, dan = await ohlcv(client, DAN)  # the shared path: iex through the service's own key
    _, bob = await ohlcv(client, BOB)
    _, dan_again = await ohlcv(client, DAN)  # now from the shared cache: still iex
    assert len(alice["bars"]) == len(bob["bars"]) == len(dan["bars"]) == 30
    assert [b[5] for b in alice["bars"]] == [b[5] * 10 for b in bob["bars"]]  # sip volumes
    assert [b[:5] for b in alice["bars"]] == [b[:5] for b in bob["bars"]]
    assert dan["bars"] == bob["bars"] == dan_again["bars"]
    _, alice_5m = await ohlcv(client, ALICE, "5m")  # natively served frames too
    assert alice_5m["bars"][0][5] == sum(b[5] for b in alice["bars"][:5])


async def test_ohlcv_with_a_wrong_key_is_that_users_502(app: Quart) -> None:
    client = app.test_client()
    await store(client, CAROL, "alice-alpaca", "a-wrong-secret")
    r = await client.get(OHLCV.format(tf="1m"), headers={"X-API-Key": CAROL})
    assert r.status_code == 502 and (await r.get_json())["error"]["code"] == "provider_error"
    _, dan = await ohlcv(client, DAN)
    assert len(dan["bars"]) == 30


async def test_unreadable_credentials_fall_back_to_the_shared_instance(
    app: Quart, emulator: ExchangeEmulator
) -> None:
    """Credentials that cannot be read (here: the key that encrypted them was dropped before a
    rotation) give the shared answer, logged and counted; never another user's."""
    from prometheus_client import REGISTRY

    await store(app.test_client(), ALICE, "alice-alpaca", "alice-secret")
    cfg = {**app.config, "CREDENTIALS_KEYS": Fernet.generate_key().decode()}
    other = create_app({k: v for k, v in cfg.items() if k.isupper()})
    before = REGISTRY.get_sample_value("credential_lookup_failures_total") or 0.0
    async with other.test_app():
        emulator.alpaca.seen_keys.clear()
        status, body = await ticker(other.test_client(), ALICE)
    assert status == 200 and body["stale"] is False
    assert set(emulator.alpaca.seen_keys) == {"op-key"}
    assert REGISTRY.get_sample_value("credential_lookup_failures_total") == before + 1


async def test_stale_tickers_and_idle_instances_are_per_user(
    app: Quart, emulator: ExchangeEmulator
) -> None:
    import time

    client = app.test_client()
    await store(client, ALICE, "alice-alpaca", "alice-secret")  # sip
    status, fresh = await ticker(client, ALICE)
    assert status == 200
    emulator.inject("/v2/stocks/*/snapshot", status=503, times=None)
    status, stale = await ticker(client, ALICE)
    assert status == 200 and stale == {**fresh, "stale": True}  # her own last ticker
    status, body = await ticker(client, DAN)  # the shared scope never saw one: no sip quote leaks
    assert status == 503 and body["error"]["code"] == "provider_unavailable"
    markets = get_services(app).markets
    assert any(k[2].startswith("user:") for k in markets._instances)
    closed = await markets.close_idle(time.monotonic() + 10_000)  # as the idle reaper does
    assert closed >= 2 and not markets._instances


async def test_replacing_credentials_keeps_one_instance_per_user_and_provider(
    app: Quart, emulator: ExchangeEmulator
) -> None:
    """Issue 23 (3): 60 credential PUTs, each used, made 60 live instances (+13 MB). Now each PUT
    retires the user's instance made from the credentials it replaces."""
    client = app.test_client()
    markets = get_services(app).markets
    for n in range(60):
        await store(client, CAROL, f"carol-alpaca-{n}", "carol-secret")
        status, _ = await ticker(client, CAROL)  # an unknown account: that user's 502
        assert status in (200, 502)
        mine = [k for k in markets._instances if k[2].startswith("user:")]
        assert len(mine) <= 1, mine
    r = await client.delete("/api/v1/credentials/alpaca", headers={"X-API-Key": CAROL})
    assert r.status_code == 204
    assert not [k for k in markets._instances if k[2].startswith("user:")]

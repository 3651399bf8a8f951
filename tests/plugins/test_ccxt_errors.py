"""Each CCXT error class maps to our class, its temporary flag and how often it is retried."""

from __future__ import annotations

import ccxt.async_support as ccxt
import pytest

from core.errors import (
    AppError,
    AuthenticationPluginError,
    MalformedResponseError,
    NetworkPluginError,
    PluginError,
    PluginFeatureNotSupportedError,
    RateLimitedPluginError,
    UnknownSymbol,
)
from plugins.ccxt_errors import TRANSLATIONS, retry_after_of, translate
from plugins.retry import RetryPolicy, parse_retry_after
from plugins.sim import SimPlugin
from tests.support.exchange_emulator.checks import NO_LEAKS
from tests.support.plugin_kit import plugin_settings
from tests.support.plugin_kit import retries as retries_of

pytestmark = NO_LEAKS
RETRIES = 3

#: (CCXT error, our class, temporary)
TABLE: list[tuple[type[Exception], type[AppError], bool]] = [
    (ccxt.DDoSProtection, RateLimitedPluginError, True),
    (ccxt.RateLimitExceeded, RateLimitedPluginError, True),
    (ccxt.RequestTimeout, NetworkPluginError, True),
    (ccxt.NetworkError, NetworkPluginError, True),
    (ccxt.ExchangeNotAvailable, NetworkPluginError, True),
    (ccxt.OnMaintenance, NetworkPluginError, True),
    (ccxt.InvalidNonce, NetworkPluginError, True),
    (ccxt.BadResponse, MalformedResponseError, True),
    (ccxt.NullResponse, MalformedResponseError, True),
    (ccxt.AuthenticationError, AuthenticationPluginError, False),
    (ccxt.PermissionDenied, AuthenticationPluginError, False),
    (ccxt.AccountSuspended, AuthenticationPluginError, False),
    (ccxt.BadSymbol, UnknownSymbol, False),
    (ccxt.NotSupported, PluginFeatureNotSupportedError, False),
    (ccxt.ExchangeError, PluginError, False),
    (ccxt.BadRequest, PluginError, False),
    (ccxt.InsufficientFunds, PluginError, False),
    (ccxt.BaseError, PluginError, False),
]


@pytest.mark.parametrize("ccxt_cls,ours,temporary", TABLE, ids=[t[0].__name__ for t in TABLE])
async def test_translation_and_retry_count(
    ccxt_cls: type[Exception], ours: type[AppError], temporary: bool
) -> None:
    provider = f"test_{ccxt_cls.__name__.lower()}"
    policy = RetryPolicy(provider, retries=RETRIES, max_wait=0.0, base_wait=0.0)
    attempts = 0

    async def call() -> None:
        nonlocal attempts
        attempts += 1
        try:
            raise ccxt_cls("binance GET https://api.binance.com/api/v3/klines 999 boom")
        except ccxt.BaseError as exc:
            raise translate(exc, provider) from exc

    with pytest.raises(ours) as info:
        await policy.call(call)
    err = info.value
    assert type(err) is ours and err.temporary is temporary
    assert isinstance(err.__cause__, ccxt_cls)
    assert "https://" not in err.message  # upstream URLs stay in the log, not in answers
    assert attempts == (RETRIES + 1 if temporary else 1)
    assert retries_of(provider) == (RETRIES if temporary else 0)
    assert err.status in (400, 404, 502, 503)


def test_table_covers_every_row_of_the_module() -> None:
    covered = {cls for cls, _, _ in TABLE}
    assert {cls for cls, _, _ in TRANSLATIONS} <= covered | {ccxt.OperationFailed}


def test_our_errors_pass_through() -> None:
    err = UnknownSymbol("x")
    assert translate(err, "binance") is err


def test_retry_after_sources() -> None:
    exc = ccxt.RateLimitExceeded("429")
    exc.retry_after = 7.0  # type: ignore[attr-defined]
    assert translate(exc, "binance").retry_after == 7.0
    ban = ccxt.DDoSProtection('binance 418 {"msg":"IP banned until 1700000060000."}')
    assert retry_after_of(ban, now_ms=1_700_000_000_000) == 60.0
    assert translate(ccxt.AuthenticationError("401"), "binance").retry_after is None
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"},
                             now_ms=1_445_412_480_000) == 10.0
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after(None) is None


async def test_retry_after_is_honoured_and_capped() -> None:
    waits: list[float] = []
    policy = RetryPolicy("test_cap", retries=2, max_wait=0.05)

    async def call() -> None:
        raise RateLimitedPluginError("x", retry_after=30.0)

    original = policy.wait_seconds

    def spy(state):  # type: ignore[no-untyped-def]
        waits.append(original(state))
        return 0.0

    object.__setattr__(policy, "wait_seconds", spy)
    with pytest.raises(RateLimitedPluginError):
        await policy.call(call)
    assert waits and set(waits) == {0.05}  # 30 s asked, capped at PROVIDER_RETRY_MAX_WAIT


def test_retry_policy_from_config() -> None:
    policy = SimPlugin("sim", settings=plugin_settings(PROVIDER_RETRIES=5,
                                                       PROVIDER_RETRY_MAX_WAIT=2.5)).retry
    assert (policy.retries, policy.max_wait) == (5, 2.5)
    assert SimPlugin("sim", settings=plugin_settings()).retry.retries == 3


@pytest.mark.parametrize("raw", ["inf", "-inf", "nan", "Infinity"])
def test_non_finite_retry_after_headers_are_ignored(raw: str) -> None:
    assert parse_retry_after({"Retry-After": raw}) is None
    assert parse_retry_after({"Retry-After": "2.5"}) == 2.5

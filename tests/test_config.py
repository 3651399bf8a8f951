"""Configuration: environment overrides and fail-fast validation naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app import create_app
from config import ConfigError, load_config

BAD = [
    ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
    ({"REDIS_URL": "http://x"}, "REDIS_URL"),
    ({"PROVIDER_URLS": '{"binance": "ftp://x"}'}, "PROVIDER_URLS"),
    ({"PROVIDER_URLS": "not json"}, "PROVIDER_URLS"),
    ({"STORAGE_MODE": "mongo"}, "STORAGE_MODE"),
    ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
    ({"DB_POOL_MIN": "5", "DB_POOL_MAX": "2"}, "DB_POOL_MIN"),
    ({"PORT": "70000"}, "PORT"),
    ({"PORT": "eighty"}, "PORT"),
    ({"CACHE_TTL_CLOSED": "-1"}, "CACHE_TTL_CLOSED"),
    ({"OHLCV_DEFAULT_LIMIT": "9000"}, "OHLCV_DEFAULT_LIMIT"),
    ({"OHLCV_MAX_LIMIT": "9000"}, "OHLCV_MAX_LIMIT"),
    ({"MAX_BODY_BYTES": "0"}, "MAX_BODY_BYTES"),
    ({"BACKFILL_MAX_QUEUED_PER_CLIENT": "0"}, "BACKFILL_MAX_QUEUED_PER_CLIENT"),
    ({"EXPORT_MAX_CONCURRENT": "0"}, "EXPORT_MAX_CONCURRENT"),
    ({"PLUGIN_MAX_INSTANCES": "0"}, "PLUGIN_MAX_INSTANCES"),
    ({"REQUEST_BODY_TIMEOUT": "0"}, "REQUEST_BODY_TIMEOUT"),
    ({"CACHE_RECENT_SECONDS": "-1"}, "CACHE_RECENT_SECONDS"),
    ({"TRUSTED_PROXIES": "10.0.0.0/40"}, "TRUSTED_PROXIES"),
    ({"TRUST_FORWARDED_FOR": "true"}, "TRUST"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
    ({"LOG_LEVELS": '{"ccxt": "LOUD"}'}, "LOG_LEVELS"),
    ({"CCXT_CREDENTIALS": "[]"}, "CCXT_CREDENTIALS must be a JSON object, got a JSON list"),
    ({"ACCESS_LOG": "maybe"}, "ACCESS_LOG must be true or false"),
    ({"REQUEST_DEADLINE": "soon"}, "REQUEST_DEADLINE must be a number, got 'soon'"),
    ({"UDF_SEARCH_SECONDS": "nan"}, "UDF_SEARCH_SECONDS must be a positive number of seconds"),
]


@pytest.mark.parametrize(("env", "name"), BAD)
def test_bad_values_fail_fast_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], name: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=name):
        load_config("testing").validate()
    with pytest.raises(ConfigError, match=name):
        create_app()


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9001")
    monkeypatch.setenv("PROVIDER_URLS", '{"binance": "http://127.0.0.1:9100"}')
    monkeypatch.setenv("CACHE_TTL_FORMING", "7")
    cfg = load_config("production")
    cfg.validate()
    assert cfg.PORT == 9001 and cfg.CACHE_TTL_FORMING == 7
    assert cfg.PROVIDER_URLS == {"binance": "http://127.0.0.1:9100"}
    assert cfg.LOG_FORMAT == "json" and cfg.APP_ENV == "production"


def test_unknown_app_env_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ENV", "staging")
    with pytest.raises(ConfigError, match="APP_ENV"):
        load_config()


def test_create_app_does_no_io_and_builds_every_extension() -> None:
    app = create_app({"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"})
    assert {"database", "redis", "services"} <= set(app.extensions)
    assert app.extensions["database"].pool is None


def test_every_setting_is_documented_in_the_configuration_reference() -> None:
    from pathlib import Path

    from config import BaseConfig

    section = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    missing = [n for n in dir(BaseConfig) if n.isupper() and f"`{n}`" not in section]
    assert not missing, f"settings missing from docs/configuration.md's table: {missing}"


def test_the_settings_table_is_the_declaration() -> None:
    """docs/configuration.md's table is exactly what config.py declares, defaults (and each
    APP_ENV's) included: a setting whose default or doc changes without `make docs` fails here."""
    from pathlib import Path

    from config import TABLE_END, TABLE_START, settings_table

    text = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    documented = TABLE_START + text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0] + TABLE_END
    assert documented == settings_table(), "run `make docs` after changing a declaration in config.py"


def test_a_setting_default_comes_from_its_declaration() -> None:
    """The services' frozen settings take their defaults from config.py's declarations."""
    from config import SETTINGS, TestingConfig
    from services.live.settings import HubSettings, PollSettings
    from services.upstream.breaker import BreakerSettings

    assert HubSettings().max_subscriptions == SETTINGS["WS_MAX_SUBSCRIPTIONS"].default == 50
    assert PollSettings().intervals == SETTINGS["POLL_INTERVALS"].default
    assert BreakerSettings().open_seconds == SETTINGS["BREAKER_OPEN_SECONDS"].default == 30.0
    assert TestingConfig().BREAKER_OPEN_SECONDS == 1.0  # the testing default, declared beside it
    with pytest.raises(ConfigError, match="BREAKER_FAILURE_THRESHOLD must be at least 1"):
        BreakerSettings.from_config({"BREAKER_FAILURE_THRESHOLD": 0})



@pytest.mark.parametrize(("env", "says"), [
    ({"PORT": "abc"}, "Error: PORT must be an integer, got 'abc'"),
    ({"CREDENTIALS_KEYS": "garbage"}, "Error: CREDENTIALS_KEYS"),
    ({"CCXT_CREDENTIALS": '{"binance": {"secret": "s3cret"'}, "Error: CCXT_CREDENTIALS must be a JSON object"),
])
def test_a_bad_setting_is_one_line_from_the_cli_not_a_traceback(env: dict[str, str], says: str) -> None:
    """``quart --app app:create_app <command>`` with a bad setting: one line naming it, exit 1."""
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, "-m", "quart", "--app", "app:create_app", "api-key", "list"],
                         cwd=root, env={**os.environ, "APP_ENV": "testing", **env},
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip() == says or run.stderr.strip().startswith(says), run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
    assert "s3cret" not in run.stderr


@pytest.mark.parametrize(("env", "said"), [
    ({"PORT": "abc"}, "configuration error: PORT must be an integer, got 'abc'"),
    ({"CREDENTIALS_KEYS": "garbage"}, "configuration error: CREDENTIALS_KEYS: entry 1 is not a Fernet key"),
])
def test_serve_names_a_bad_setting_in_one_line(env: dict[str, str], said: str) -> None:
    """``python serve.py`` (``make run``, the image, the unit) with a bad setting: exit 1 and the
    message, not a traceback."""
    run = subprocess.run([sys.executable, "serve.py"], cwd=Path(__file__).parent.parent, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "APP_ENV": "testing", "LOG_LEVEL": "WARNING", **env})
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == said
    assert "Traceback" not in run.stderr

"""Shared fixtures: each test gets its own PostgreSQL schema and Redis key prefix.

Tests talk to the real PostgreSQL (127.0.0.1:5432, database ``test``) and Redis (127.0.0.1:6379).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from quart import Quart
from quart.typing import TestClientProtocol

from app import create_app
from tests.support.helpers import delete_prefix, drop_schema
from tests.support.pglite.fixtures import timescale_url, ts_app  # noqa: F401  (started only when asked for)

DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def db_schema(uid: str) -> AsyncIterator[str]:
    """A fresh schema, dropped after the test."""
    schema = f"t_{uid}"
    yield schema
    await drop_schema(DATABASE_URL, schema)


@pytest.fixture
async def redis_prefix(uid: str) -> AsyncIterator[str]:
    """A fresh Redis key prefix; its keys are deleted after the test."""
    prefix = f"t:{uid}"
    yield prefix
    await delete_prefix(REDIS_URL, prefix)


@pytest.fixture
def app_config(db_schema: str, redis_prefix: str) -> dict[str, Any]:
    return {
        "APP_ENV": "testing",
        "DATABASE_URL": DATABASE_URL,
        "DATABASE_SCHEMA": db_schema,
        "REDIS_URL": REDIS_URL,
        "REDIS_PREFIX": redis_prefix,
        "LOG_LEVEL": "WARNING",
        "PROVIDER_URLS": {},
    }


@pytest.fixture
async def app(app_config: dict[str, Any]) -> AsyncIterator[Quart]:
    application = create_app(app_config)
    async with application.test_app():
        yield application


@pytest.fixture
def client(app: Quart) -> TestClientProtocol:
    return app.test_client()


@pytest.fixture
async def pg(db_schema: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection with search_path on the test's schema (created if needed)."""
    conn = await asyncpg.connect(DATABASE_URL)
    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{db_schema}"')
    await conn.execute(f'SET search_path TO "{db_schema}", public')
    try:
        yield conn
    finally:
        await conn.close()

"""Pytest fixture: ``from tests.support.exchange_emulator.fixtures import emulator  # noqa: F401``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from .server import ExchangeEmulator


@pytest_asyncio.fixture
async def emulator() -> AsyncIterator[ExchangeEmulator]:
    """A started emulator on a free 127.0.0.1 port, stopped after the test."""
    emu = ExchangeEmulator()
    await emu.start()
    try:
        yield emu
    finally:
        await emu.stop()

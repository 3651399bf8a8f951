"""A local exchange emulator speaking Binance spot and Alpaca data v2 REST, for tests and benches.

``ExchangeEmulator`` runs in the test's event loop; ``python -m tests.support.exchange_emulator --port N``
runs it as a process controlled through ``/__emulator/`` (see ``control.py``).
"""

from .server import ExchangeEmulator

__all__ = ["ExchangeEmulator"]

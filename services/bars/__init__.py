"""The bars path: answering a window of OHLCV bars, and keeping what it learns.

``ohlcv`` is what ``GET /ohlcv`` calls: the shared ``orchestrator``, or one over a user's own
provider instance alone.
``orchestrator`` owns the window (``query``: ``BarQuery``, ``BarAnswer``), the answer cache,
in-flight dedup and the write-through, and asks its ``sources`` in turn: ``storage`` (PostgreSQL,
with ``aggregates`` for the coarser timeframes), the 1m ``cache`` (Redis) and the
``provider_source``; ``warmup`` prefetches what dashboards asked for recently.
"""

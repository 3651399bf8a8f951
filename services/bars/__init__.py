"""The bars path: answering a window of OHLCV bars, and keeping what it learns.

``orchestrator`` owns the window (``query``: ``BarQuery``, ``BarAnswer``), the answer cache and
in-flight dedup, and asks its ``sources`` in turn: the ``cache`` (Redis), ``storage`` (PostgreSQL,
with ``aggregates`` for the coarser timeframes) and the ``provider_source``. ``user_bars`` answers
a user's own provider instance, ``warmup`` prefetches what dashboards asked for recently.
"""

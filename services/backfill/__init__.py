"""Backfills: filling a series' stored history from its provider, in the background.

``manager`` queues and leases jobs (``jobs``: their rows), ``runner`` runs the leased ones,
``chunks`` fetches and writes a job's chunks, ``gaps`` plans the chunks and reports the gaps.
"""

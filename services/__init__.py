"""The service layer, one package per feature: ``bars`` (the bars path), ``upstream`` (calls to
the providers), ``backfill``, ``live`` (live candles), ``bus`` (the cluster transport and the
revisions topic), ``export``; see docs/architecture.md."""

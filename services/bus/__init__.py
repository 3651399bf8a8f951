"""The cluster's bus: ``Broadcast`` over swappable ``backends`` (``redis_backend`` shared by the
instances, memory while Redis is down), the batching of its writes (``batch``), and the
``revisions`` topic, through which the REST path, live pollers and backfills announce revised
stored bars without knowing the WebSocket hub.
"""

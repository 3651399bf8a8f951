"""Prometheus metric families of the WebSocket service (default registry).

Labels carry configured provider ids, frame types and fixed reasons only, never client input.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

WS_CONNECTIONS = Gauge("ws_connections", "Open WebSocket connections on this instance",
                       multiprocess_mode="livesum")
WS_SUBSCRIPTIONS = Gauge("ws_subscriptions", "Channel subscriptions held by this instance's clients",
                         multiprocess_mode="livesum")
WS_ACTIVE_CHANNELS = Gauge("ws_active_channels", "Channels with subscribers (or in grace) here",
                           multiprocess_mode="livesum")
WS_POLLING_CHANNELS = Gauge("ws_polling_channels", "Channels this instance polls (holds the lease)",
                            multiprocess_mode="livesum")
WS_CLUSTER_MODE = Gauge(
    "ws_cluster_mode", "1 when fan-out and leases go through Redis, 0 in in-memory mode",
    multiprocess_mode="livemin",
)
WS_FRAMES_SENT = Counter("ws_frames_sent_total", "Frames written to clients", ["type"])
WS_CLIENTS_DROPPED = Counter(
    "ws_clients_dropped_total", "Clients disconnected by the server", ["reason"]
)
WS_POLLS = Counter("ws_polls_total", "Upstream polls made by subscription workers", ["provider"])
WS_POLL_ERRORS = Counter(
    "ws_poll_errors_total", "Failed upstream polls of subscription workers", ["provider", "code"]
)
WS_STORAGE_ERRORS = Counter(
    "ws_storage_errors_total", "Closed 1m bars a worker could not write yet (retried)"
)
WS_FANOUT_LATENCY = Histogram(
    "ws_fanout_latency_seconds", "From the poll result to the frame written to a client",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

"""Wires the operators' side into the app: CORS, API keys, rate limits, the request guard
(ambiguous framing, body deadline) and Prometheus multiprocess clean-up. (Blueprints are registered in create_app.)

Hook order matters: CORS and the Origin check first, then auth (sets ``g.api_key_id``), then the
rate limiter (limits per key, else per client IP).
"""

from __future__ import annotations

import logging
import os

from prometheus_client import multiprocess
from quart import Quart

from app_extensions.auth import ApiKeyAuth
from app_extensions.auth_cli import init_auth_cli
from app_extensions.cors import Cors
from app_extensions.ratelimit import RateLimiter
from app_extensions.request_guard import RequestGuard

log = logging.getLogger(__name__)


def init_operations(app: Quart) -> None:
    """Call after the Database and RedisClient extensions exist."""
    Cors(app)
    ApiKeyAuth(app)
    RateLimiter(app)
    RequestGuard(app)  # ambiguous framing refused, body deadline (outermost ASGI wrapper)
    init_auth_cli(app)

    @app.after_serving
    async def _multiprocess_cleanup() -> None:
        # Live gauges of a stopped worker must not linger in the aggregated /metrics.
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            multiprocess.mark_process_dead(os.getpid())

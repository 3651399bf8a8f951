"""SubscriptionService: WebSocket clients, their subscriptions and snapshots, over the Hub.

Each subscription of a connection holds one reference to its channel in the hub
(``hub.subscribe``) for as long as it lasts. Snapshots come from the DataOrchestrator: the same
data REST serves. ``GET /channels`` is answered here from the hub's cluster-wide records.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from core.errors import APIError, AppError, UnknownSymbol
from core.metrics import WS_CONNECTIONS, WS_SUBSCRIPTIONS
from core.timeframes import Bar, bucket_start, now_ms, tf_ms
from core.types import Channel
from services.bars.orchestrator import BarQuery, DataOrchestrator
from services.bus.broadcast import stop_task
from services.live.channels import ChannelsReport
from services.live.connection import CLOSE_GOING_AWAY, Connection, Outlet
from services.live.hub import ChannelEntry, Hub
from services.live.settings import HubSettings
from services.upstream.market_service import MarketService

log = logging.getLogger(__name__)
#: Most bars a snapshot holds (``history`` and ``since`` alike).
MAX_SNAPSHOT_BARS = 1000


class TooManySubscriptions(AppError):
    """The connection holds ``WS_MAX_SUBSCRIPTIONS`` already: unsubscribe first."""

    status, code = 429, "too_many_subscriptions"


class TooManyConnections(AppError):
    """The client has ``WS_MAX_CONNECTIONS_PER_CLIENT`` connections open here: close one first."""

    status, code = 429, "too_many_connections"


class SubscriptionService:
    """Owner of live subscriptions; reach it as ``get_services(app).subscriptions``."""

    def __init__(self, *, markets: MarketService, orchestrator: DataOrchestrator, hub: Hub,
                 report: ChannelsReport, settings: HubSettings) -> None:
        self.markets, self.orchestrator, self.hub = markets, orchestrator, hub
        self.report, self.settings = report, settings
        self.connections: set[Connection] = set()
        #: Open connections per client identity (``WS_MAX_CONNECTIONS_PER_CLIENT``).
        self.per_client: dict[str, int] = {}
        #: Snapshots fetched at once: a reconnect storm must not exhaust the DB or Redis pools.
        self._snapshots = asyncio.Semaphore(settings.snapshot_concurrency)
        self._closing = False
        #: Set when the last connection has ended (for ``going_away``).
        self._all_gone = asyncio.Event()
        #: Drops connections whose send has stalled (``Connection.stalled``), about once a second.
        self._watchdog: asyncio.Task[None] | None = None

    # --- Lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the hub and the cluster report of this instance's channels."""
        self._closing = False
        await self.hub.start()
        await self.report.start()
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch_sends(), name="ws-send-watchdog")

    async def close(self) -> None:
        """Stop pollers (releasing their leases), then fan-out, then ask clients to go away."""
        self._closing = True
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            await stop_task(watchdog)
        await self.report.close()
        await self.hub.close()
        for conn in list(self.connections):
            conn.drop("shutdown", CLOSE_GOING_AWAY)

    async def going_away(self, drain_seconds: float) -> None:
        """Ask every client to reconnect elsewhere (close 1001) and wait up to ``drain_seconds`` for
        their connections to end. For the server's shutdown trigger: Hypercorn gives the app no
        signal before its graceful timeout, after which it ends connections with 1011 or 1006."""
        self._closing = True
        for conn in list(self.connections):
            conn.drop("shutdown", CLOSE_GOING_AWAY)
        try:
            if self.connections:
                await asyncio.wait_for(self._all_gone.wait(), drain_seconds)
        except TimeoutError:
            log.warning("%d WebSocket connections still open after going away", len(self.connections))

    def status(self) -> dict[str, Any]:
        """For readiness: cluster mode (``redis`` or ``memory``) and local counts."""
        return {
            "mode": self.hub.mode,
            "lease_mode": self.hub.mode,
            "instance_id": self.hub.instance_id,
            "connections": len(self.connections),
            "channels": len(self.hub.channels),
            "polling": len(self.hub.polling),
        }

    @property
    def channels(self) -> dict[str, ChannelEntry]:
        """This instance's channels (with subscribers, or in their grace period)."""
        return self.hub.channels

    @property
    def workers(self) -> dict[str, asyncio.Task[None]]:
        """The poll loops this instance runs (it holds their channels' leases)."""
        return self.hub.polling

    async def cluster_channels(self) -> list[dict[str, Any]]:
        """The live channels of the whole cluster (``GET /channels``)."""
        return await self.report.channels()

    async def _watch_sends(self) -> None:
        """Every ``min(1, WS_SEND_TIMEOUT_SECONDS / 4)`` s, drop the connections whose send has
        stalled: one loop for all of them instead of a timer per message sent."""
        loop = asyncio.get_running_loop()
        every = min(1.0, self.settings.send_timeout / 4)
        while True:
            await asyncio.sleep(every)
            now = loop.time()
            for conn in list(self.connections):
                conn.stalled(now)

    # --- Connections ---------------------------------------------------------------------------
    def connect(self, outlet: Outlet, client: str = "") -> Connection:
        """Register a new connection of ``client`` (its identity) sending its messages through
        ``outlet``. Raises ``TooManyConnections`` when the client has the most open already."""
        limit = self.settings.max_connections_per_client
        held = self.per_client.get(client, 0)
        if held >= limit:
            raise TooManyConnections(f"at most {limit} open WebSocket connections per client "
                                     "(WS_MAX_CONNECTIONS_PER_CLIENT)", retry_after=5.0)
        self.per_client[client] = held + 1
        conn = Connection(outlet, max_queue=self.settings.send_queue,
                          send_timeout=self.settings.send_timeout, client=client)
        self.connections.add(conn)
        self._all_gone.clear()
        WS_CONNECTIONS.inc()
        return conn

    async def disconnect(self, conn: Connection) -> None:
        """Forget a connection and release its channels."""
        if conn not in self.connections:
            return
        self.connections.discard(conn)
        left = self.per_client.get(conn.client, 1) - 1
        if left > 0:
            self.per_client[conn.client] = left
        else:
            self.per_client.pop(conn.client, None)
        if not self.connections:
            self._all_gone.set()
        WS_CONNECTIONS.dec()
        for name in list(conn.subs):
            await self._leave(conn, name)

    async def subscribe(self, conn: Connection, req: dict[str, Any]) -> None:
        """Validate, join the channel, queue ``subscribed`` and the snapshot. Raises AppError."""
        if self._closing:
            raise APIError(503, "dependency_unavailable", "the server is shutting down: reconnect")
        channel = Channel(req["market"], req["provider"], req["symbol"], req["timeframe"])
        if channel.name not in conn.subs and len(conn.subs) >= self.settings.max_subscriptions:
            raise TooManySubscriptions(
                f"at most {self.settings.max_subscriptions} subscriptions per connection")
        self.markets.check_provider(channel.market, channel.provider)
        async with self._snapshots:
            await self._join(conn, channel, req)

    async def _join(self, conn: Connection, channel: Channel, req: dict[str, Any]) -> None:
        name = channel.name
        if channel.symbol not in await self.markets.symbols(channel.market, channel.provider):
            raise UnknownSymbol(f"unknown symbol {channel.symbol!r} for provider {channel.provider}")
        held = name in conn.subs
        sub = conn.hold(name)
        try:
            if not held:
                WS_SUBSCRIPTIONS.inc()
                scope = self.hub.subscribe(channel, conn)
                entry = await scope.__aenter__()
                sub.scope = scope
            else:
                entry = self.hub.channels[name]
            bars, incomplete = await self._snapshot(channel, req)
            # A poll that started before this moment may have fetched before the snapshot did.
            fetched_at = time.time()
        except BaseException:
            await self._leave(conn, name)
            raise
        conn.send_frame({"type": "subscribed", "channel": name, "id": req.get("id")})
        snapshot: dict[str, Any] = {"type": "snapshot", "channel": name, "bars": bars}
        if incomplete:  # REQUEST_DEADLINE cut the history short (REST: X-Data-Incomplete)
            snapshot["incomplete"] = True
        conn.send_frame(snapshot)
        if entry.stale is not None:
            conn.deliver(entry.stale)
        conn.ready(name, bars, fetched_at)
        if entry.last_bar is not None:
            conn.deliver(entry.last_bar)

    async def _snapshot(self, channel: Channel, req: dict[str, Any]) -> tuple[list[Bar], bool]:
        """``history`` latest bars, or (``since``) every bar from ``since`` on, at most 1000; and
        whether the answer is incomplete (the provider missed ``REQUEST_DEADLINE``)."""
        since = req.get("since")
        if since is None:
            if req["history"] <= 0:
                return [], False
            q = BarQuery(channel.series, channel.timeframe, None, None, req["history"])
            answer = await self.orchestrator.get_bars(q)
            return answer.bars, answer.incomplete
        size = tf_ms(channel.timeframe)
        newest = bucket_start(now_ms(), channel.timeframe)
        if since > newest:
            return [], False
        if since > newest - MAX_SNAPSHOT_BARS * size:  # one page from since reaches now
            q = BarQuery(channel.series, channel.timeframe, since, None, MAX_SNAPSHOT_BARS)
        else:  # the newest 1000 (a longer absence leaves older ones to REST)
            q = BarQuery(channel.series, channel.timeframe, None, None, MAX_SNAPSHOT_BARS)
        answer = await self.orchestrator.get_bars(q)
        return [b for b in answer.bars if b[0] >= since][-MAX_SNAPSHOT_BARS:], answer.incomplete

    async def unsubscribe(self, conn: Connection, channel_name: str, req_id: Any) -> None:
        """Leave a channel (idempotent) and queue ``unsubscribed``. Raises InvalidParameter."""
        name = Channel.parse(channel_name).name
        await self._leave(conn, name)
        conn.send_frame({"type": "unsubscribed", "channel": name, "id": req_id})

    async def _leave(self, conn: Connection, name: str) -> None:
        sub = conn.subs.pop(name, None)
        if sub is not None:
            WS_SUBSCRIPTIONS.dec()
            if sub.scope is not None:
                await sub.scope.__aexit__(None, None, None)

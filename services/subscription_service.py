"""SubscriptionService: WebSocket clients, snapshots and reference-counted live channels.

The first local subscriber of a channel subscribes this instance to its broadcast and enters it in
the SubscriptionRegistry (which starts a SubscriptionWorker here when this instance holds the
channel's lease); the last one to leave starts a grace period (``WS_UNSUBSCRIBE_GRACE_SECONDS``),
after which the channel is torn down, so a dashboard that reloads does not restart the poller.
Snapshots come from the DataOrchestrator: the same data REST serves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from config import ConfigError
from core.errors import APIError, AppError, UnknownSymbol
from core.metrics import (
    WS_ACTIVE_CHANNELS,
    WS_CONNECTIONS,
    WS_POLLING_CHANNELS,
    WS_SUBSCRIPTIONS,
    forget_candle_lag,
)
from services.broadcast import BroadcastManager, SubscriptionRegistry, stop_task
from services.market_service import MarketService
from services.orchestrator import BarQuery, DataOrchestrator
from services.sources import DbSource
from services.subscription_worker import Channel, ChannelStateStore, PollSettings, SubscriptionWorker
from services.ws_connection import CLOSE_GOING_AWAY, Connection, Send

log = logging.getLogger(__name__)


class TooManySubscriptions(AppError):
    """The connection holds ``WS_MAX_SUBSCRIPTIONS`` already: unsubscribe first."""

    status, code = 429, "too_many_subscriptions"


@dataclass
class ChannelState:
    channel: Channel
    subscribers: set[Connection] = field(default_factory=set)
    grace: asyncio.Task[None] | None = None
    #: Newest bar frame (ts, t_poll, text) and the pending stale status frame, for late joiners.
    last_bar: tuple[int, float, str] | None = None
    stale: tuple[float, str] | None = None


def poll_settings(config: dict[str, Any]) -> PollSettings:
    """``PollSettings`` from the ``POLL_*`` config values."""
    return PollSettings(
        intervals={k: float(v) for k, v in dict(config.get("POLL_INTERVALS") or {}).items()},
        default_interval=float(config.get("POLL_INTERVAL_DEFAULT", 5.0)),
        provider_min={k: float(v) for k, v in
                      dict(config.get("POLL_PROVIDER_MIN_INTERVALS") or {}).items()},
        close_delay=float(config.get("POLL_CLOSE_DELAY_SECONDS", 0.5)),
        max_backoff=float(config.get("POLL_MAX_BACKOFF_SECONDS", 30.0)),
        max_catchup_bars=int(config.get("POLL_MAX_CATCHUP_BARS", 5000)),
        catchup_chunk=max(1, int(config.get("WS_SEND_QUEUE", 256)) // 4),
    )


class SubscriptionService:
    """Owner of live subscriptions; reach it as ``get_services(app).subscriptions``."""

    def __init__(self, *, markets: MarketService, orchestrator: DataOrchestrator,
                 broadcast: BroadcastManager, registry: SubscriptionRegistry,
                 store: ChannelStateStore, db: DbSource | None, config: dict[str, Any]) -> None:
        self.markets, self.orchestrator, self.db = markets, orchestrator, db
        self.broadcast, self.registry, self.store = broadcast, registry, store
        self.max_subscriptions = int(config.get("WS_MAX_SUBSCRIPTIONS", 50))
        self.max_queue = int(config.get("WS_SEND_QUEUE", 256))
        self.grace = float(config.get("WS_UNSUBSCRIBE_GRACE_SECONDS", 5.0))
        self.send_timeout = float(config.get("WS_SEND_TIMEOUT_SECONDS", 30.0))
        self.settings = poll_settings(config)
        for name in ("WS_MAX_SUBSCRIPTIONS", "WS_SEND_QUEUE", "WS_MAX_MESSAGE_BYTES",
                     "WS_SNAPSHOT_CONCURRENCY"):
            if int(config.get(name, 1)) < 1:
                raise ConfigError(f"{name} must be at least 1")
        for name in ("POLL_INTERVAL_DEFAULT", "LEASE_TTL_SECONDS", "WS_HEARTBEAT_SECONDS",
                     "WS_SEND_TIMEOUT_SECONDS"):
            if float(config.get(name, 1.0)) <= 0:
                raise ConfigError(f"{name} must be positive")
        self.connections: set[Connection] = set()
        self.channels: dict[str, ChannelState] = {}
        self.workers: dict[str, tuple[SubscriptionWorker, asyncio.Task[None]]] = {}
        self._lifecycle = asyncio.Lock()
        #: Snapshots fetched at once: a reconnect storm must not exhaust the DB or Redis pools.
        self._snapshots = asyncio.Semaphore(int(config.get("WS_SNAPSHOT_CONCURRENCY", 16)))
        self._registry_task: asyncio.Task[None] | None = None
        self._closing = False
        #: Set when the last connection has ended (for ``going_away``).
        self._all_gone = asyncio.Event()
        broadcast.set_handler(self._on_frame)
        registry.on_gain, registry.on_loss = self._start_worker, self._stop_worker

    @classmethod
    def build(cls, *, markets: MarketService, orchestrator: DataOrchestrator, redis: Any,
              db: DbSource | None, config: dict[str, Any]) -> SubscriptionService:
        """The service with its Redis-backed collaborators (memory mode while Redis is down)."""
        retry = float(config.get("DEPENDENCY_RETRY_AFTER", 2.0))
        broadcast = BroadcastManager(redis, retry_after=retry)
        registry = SubscriptionRegistry(redis, broadcast, ttl=float(config.get("LEASE_TTL_SECONDS", 6.0)),
                                        instance_id=uuid.uuid4().hex)
        return cls(markets=markets, orchestrator=orchestrator, broadcast=broadcast,
                   registry=registry, store=ChannelStateStore(redis), db=db, config=config)

    # --- Lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the broadcast reader and the lease renewal loop."""
        self._closing = False
        await self.broadcast.start()
        if self._registry_task is None:
            self._registry_task = asyncio.create_task(self.registry.run(), name="ws-lease-renewal")

    async def close(self) -> None:
        """Stop workers (releasing their leases), then fan-out, then ask clients to go away."""
        self._closing = True
        task, self._registry_task = self._registry_task, None
        if task is not None:
            await stop_task(task)
        await self.registry.close()
        for state in list(self.channels.values()):
            if state.grace is not None:
                await stop_task(state.grace)
        await self.broadcast.close()
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
            "mode": self.broadcast.mode,
            "lease_mode": self.registry.mode,
            "instance_id": self.registry.instance_id,
            "connections": len(self.connections),
            "channels": len(self.channels),
            "polling": len(self.workers),
        }

    # --- Connections ---------------------------------------------------------------------------
    def connect(self, send: Send) -> Connection:
        """Register a new client connection writing frames with ``send``."""
        conn = Connection(send, max_queue=self.max_queue, send_timeout=self.send_timeout)
        self.connections.add(conn)
        self._all_gone.clear()
        WS_CONNECTIONS.inc()
        return conn

    async def disconnect(self, conn: Connection) -> None:
        """Forget a connection and release its channels."""
        if conn not in self.connections:
            return
        self.connections.discard(conn)
        if not self.connections:
            self._all_gone.set()
        WS_CONNECTIONS.dec()
        for name in list(conn.subs):
            conn.subs.pop(name, None)
            WS_SUBSCRIPTIONS.dec()
            self._release(conn, name)

    async def subscribe(self, conn: Connection, req: dict[str, Any]) -> None:
        """Validate, join the channel, queue ``subscribed`` and the snapshot. Raises AppError."""
        if self._closing:
            raise APIError(503, "dependency_unavailable", "the server is shutting down: reconnect")
        channel = Channel(req["market"], req["provider"], req["symbol"], req["timeframe"])
        name = channel.name
        if name not in conn.subs and len(conn.subs) >= self.max_subscriptions:
            raise TooManySubscriptions(f"at most {self.max_subscriptions} subscriptions per connection")
        self.markets.check_provider(channel.market, channel.provider)
        async with self._snapshots:
            await self._join(conn, channel, req)

    async def _join(self, conn: Connection, channel: Channel, req: dict[str, Any]) -> None:
        name = channel.name
        if channel.symbol not in await self.markets.symbols(channel.market, channel.provider):
            raise UnknownSymbol(f"unknown symbol {channel.symbol!r} for provider {channel.provider}")
        if name not in conn.subs:
            WS_SUBSCRIPTIONS.inc()
        conn.hold(name)
        try:
            await self._acquire(conn, channel)
            bars: list[Any] = []
            if req["history"] > 0:
                answer = await self.orchestrator.get_bars(
                    BarQuery(channel.series, channel.timeframe, None, None, req["history"]))
                bars = answer.bars
        except BaseException:
            if conn.subs.pop(name, None) is not None:
                WS_SUBSCRIPTIONS.dec()
                self._release(conn, name)
            raise
        conn.send_frame({"type": "subscribed", "channel": name, "id": req.get("id")})
        conn.send_frame({"type": "snapshot", "channel": name, "bars": bars})
        state = self.channels.get(name)
        if state is not None and state.stale is not None:
            conn.deliver(name, -1, *state.stale)
        # The snapshot's last bar as the frame a worker would send: an identical frame is skipped.
        last = json.dumps({"type": "bar", "channel": name, "bar": bars[-1], "closed": False},
                          separators=(",", ":")) if bars else ""
        conn.ready(name, int(bars[-1][0]) if bars else -1, last)
        if state is not None and state.last_bar is not None:
            conn.deliver(name, *state.last_bar)

    async def unsubscribe(self, conn: Connection, channel_name: str, req_id: Any) -> None:
        """Leave a channel (idempotent) and queue ``unsubscribed``. Raises InvalidParameter."""
        name = Channel.parse(channel_name).name
        if conn.subs.pop(name, None) is not None:
            WS_SUBSCRIPTIONS.dec()
            self._release(conn, name)
        conn.send_frame({"type": "unsubscribed", "channel": name, "id": req_id})

    # --- Channels ------------------------------------------------------------------------------
    async def _acquire(self, conn: Connection, channel: Channel) -> None:
        async with self._lifecycle:
            state = self.channels.get(channel.name)
            if state is None:
                state = self.channels[channel.name] = ChannelState(channel)
                WS_ACTIVE_CHANNELS.inc()
                state.subscribers.add(conn)
                try:
                    await self.broadcast.subscribe(channel.name)
                    await self.registry.add(channel.name)
                except BaseException:  # undo: a later subscriber must set the channel up again
                    del self.channels[channel.name]
                    WS_ACTIVE_CHANNELS.dec()
                    await self.registry.remove(channel.name)
                    await self.broadcast.unsubscribe(channel.name)
                    raise
                return
            if state.grace is not None:
                state.grace.cancel()
                state.grace = None
            state.subscribers.add(conn)

    def _release(self, conn: Connection, name: str) -> None:
        state = self.channels.get(name)
        if state is None:
            return
        state.subscribers.discard(conn)
        if not state.subscribers and state.grace is None and not self._closing:
            state.grace = asyncio.create_task(self._expire(state), name=f"ws-grace-{name}")

    async def _expire(self, state: ChannelState) -> None:
        await asyncio.sleep(self.grace)
        async with self._lifecycle:
            name = state.channel.name
            if state.subscribers or self.channels.get(name) is not state:
                return
            state.grace = None  # from here the teardown runs to its end
            del self.channels[name]
            WS_ACTIVE_CHANNELS.dec()
            await self.registry.remove(name)
            await self.broadcast.unsubscribe(name)

    def _on_frame(self, channel: str, ts: int, t_poll: float, text: str) -> None:
        state = self.channels.get(channel)
        if state is None:
            return
        if ts >= 0:
            state.last_bar = (ts, t_poll, text)
        else:
            state.stale = (t_poll, text) if '"state":"stale"' in text else None
        for conn in list(state.subscribers):
            conn.deliver(channel, ts, t_poll, text)

    # --- Workers (called by the registry) ---------------------------------------------------------
    async def _start_worker(self, name: str) -> None:
        if name in self.workers:
            return
        worker = SubscriptionWorker(Channel.parse(name), markets=self.markets,
                                    publish=self.broadcast.publish, store=self.store, db=self.db,
                                    settings=self.settings)
        self.workers[name] = (worker, asyncio.create_task(worker.run(), name=f"ws-poll-{name}"))
        WS_POLLING_CHANNELS.inc()

    async def _stop_worker(self, name: str) -> None:
        entry = self.workers.pop(name, None)
        if entry is not None:
            WS_POLLING_CHANNELS.dec()
            await stop_task(entry[1])
            forget_candle_lag(name)

"""Live candles: the WebSocket hub, its pollers and stream feeds.

Subscriptions over reference-counted channels (``service``, ``connection``, ``hub``), one poller
per channel in the cluster (``poller``, or ``streams.StreamPoller`` fed by an exchange's kline stream:
``streams``), fan-out through the bus (``services.bus``: Redis, or memory while it is down).

``build`` wires the pieces; see ``hub.py`` for the shape and docs/websocket.md for the protocol.
"""

from __future__ import annotations

import uuid

from core.timeframes import Bar, tf_ms
from core.types import Channel, Series
from services.bars.orchestrator import BarQuery, DataOrchestrator
from services.bus.broadcast import Broadcast
from services.live.channels import ChannelsReport
from services.live.commits import GroupCommit
from services.live.hub import Hub
from services.live.poller import Output, Poller, Writer
from services.live.service import SubscriptionService
from services.live.settings import HubSettings
from services.live.state import StateStore
from services.live.streams import StreamPoller, StreamRegistry
from services.upstream.market_service import MarketService

__all__ = ["Hub", "HubSettings", "SubscriptionService", "build"]


def build(*, markets: MarketService, orchestrator: DataOrchestrator, broadcast: Broadcast,
          db: Writer | None, settings: HubSettings,
          streams: StreamRegistry | None = None) -> SubscriptionService:
    """The subscription service over a hub on ``broadcast``; pollers write closed bars to ``db``;
    with ``streams`` channels of exchanges with kline streams are fed by them."""
    store = StateStore(broadcast)

    async def bucket(series: Series, timeframe: str, start: int) -> Bar | None:
        size = tf_ms(timeframe)
        bars = (await orchestrator.get_bars(BarQuery(series, timeframe, start, start + size, 1))).bars
        return bars[0] if bars and int(bars[0][0]) == start else None

    def pollers(channel: Channel, out: Output) -> Poller:
        if streams is not None:
            return StreamPoller(channel, markets=markets, out=out, store=store, db=db,
                                settings=settings.poll, bucket=bucket, streams=streams)
        return Poller(channel, markets=markets, out=out, store=store, db=db,
                      settings=settings.poll, bucket=bucket)

    hub = Hub(broadcast, pollers, settings, instance_id=uuid.uuid4().hex, commits=GroupCommit(store))
    return SubscriptionService(markets=markets, orchestrator=orchestrator, hub=hub,
                               report=ChannelsReport(hub, store), settings=settings)

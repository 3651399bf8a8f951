"""``python -m tests.support.exchange_emulator --port 9100 [--weight-limit 120] [--stream-interval 0.1]``:
serve the emulator until interrupted (Binance weight enforcement and stream push interval can
also be set later through ``/__emulator/weights`` and ``/__emulator/stream``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from .server import ExchangeEmulator


async def _serve(host: str, port: int, weight_limit: int | None, stream_interval: float) -> None:
    emu = ExchangeEmulator()
    emu.weights.configure(limit=weight_limit)
    emu.streams.interval = stream_interval
    url = await emu.start(host, port)
    print(f"exchange emulator on {url} (control API under {url}/__emulator/)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await emu.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--weight-limit", type=int, default=None,
                        help="enforce Binance's request weight: this much per minute")
    parser.add_argument("--stream-interval", type=float, default=2.0,
                        help="seconds between kline stream pushes (Binance: 2)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    asyncio.run(_serve(args.host, args.port, args.weight_limit, args.stream_interval))


if __name__ == "__main__":
    main()

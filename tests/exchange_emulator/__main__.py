"""``python -m tests.exchange_emulator --port 9100``: serve the emulator until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from .server import ExchangeEmulator


async def _serve(host: str, port: int) -> None:
    emu = ExchangeEmulator()
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
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    asyncio.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()

"""blueprints.ws_server: the WebSocket settings as each server's own configuration values (no
patch: nothing of Hypercorn, wsproto or Quart is changed by building them)."""

from __future__ import annotations

import hypercorn.config
import uvicorn
from hypercorn.protocol.ws_stream import WSStream

from blueprints.ws_server import hypercorn_options, uvicorn_options

CONFIG = {"WS_HEARTBEAT_SECONDS": 20.0, "WS_MAX_MESSAGE_BYTES": 4096, "WS_PER_MESSAGE_DEFLATE": False}


def test_hypercorn_options_are_hypercorn_config_values() -> None:
    methods = dict(vars(WSStream))
    options = hypercorn_options(CONFIG)
    assert options == {"websocket_ping_interval": 20.0, "read_timeout": 60.0,
                       "websocket_max_message_size": 65536}
    config = hypercorn.config.Config()
    for name, value in options.items():
        assert hasattr(config, name)
        setattr(config, name, value)
    assert dict(vars(WSStream)) == methods  # nothing patched


def test_uvicorn_options_are_uvicorn_config_arguments() -> None:
    options = uvicorn_options({**CONFIG, "WS_MAX_MESSAGE_BYTES": 8192})
    assert options == {"ws_ping_interval": 20.0, "ws_ping_timeout": 40.0, "ws_max_size": 131072,
                       "ws_per_message_deflate": False}
    config = uvicorn.Config(app=lambda *a: None, **options)
    assert config.ws_per_message_deflate is False and config.ws_max_size == 131072

"""wire: a channel frame's JSON text is made once and shared by every client; replies are compact."""

from __future__ import annotations

import json

from services.live.frames import BarFrame, StatusFrame
from services.live.wire import Reply


def test_a_shared_frame_is_encoded_once_as_the_client_frame() -> None:
    bar = BarFrame("sim:sim:SIM/USD:1m", [1_700_000_040_000, 1.0, 2.0, 0.5, 1.5, 3.0], False, 7)
    assert bar.text is bar.text  # the same str for every client of the channel
    assert json.loads(bar.text) == {"type": "bar", "channel": "sim:sim:SIM/USD:1m",
                                    "bar": [1_700_000_040_000, 1.0, 2.0, 0.5, 1.5, 3.0],
                                    "closed": False, "seq": 7}
    status = StatusFrame("sim:sim:SIM/USD:1m", "stale", "provider_unavailable")
    assert json.loads(status.text) == status.client()


def test_a_reply_is_compact_json() -> None:
    assert Reply({"type": "pong", "id": 1}).text == '{"type":"pong","id":1}'

"""blueprints/schemas.py through the app: what a client gets for a time its URL mangled."""

from __future__ import annotations

from quart.typing import TestClientProtocol


async def test_an_unencoded_plus_in_a_time_says_to_send_2b_or_z(client: TestClientProtocol) -> None:
    # As typed in a browser or curl: the "+" of the zone is not percent-encoded.
    r = await client.get("/api/v1/ohlcv?market=sim&provider=sim&symbol=SIM/USD"
                         "&start=2024-01-01T00:00:00+00:00")
    body = await r.get_json()
    assert r.status_code == 400 and body["error"]["code"] == "invalid_parameter"
    said = body["error"]["details"]["start"][0]
    assert "%2B" in said and "Z" in said, said
    encoded = await client.get("/api/v1/ohlcv?market=sim&provider=sim&symbol=SIM/USD&limit=2"
                               "&start=2024-01-01T00:00:00%2B00:00")
    assert encoded.status_code == 200

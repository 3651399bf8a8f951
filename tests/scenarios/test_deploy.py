"""deploy/: the compose file is valid (when docker-compose is installed) and safe by default, and
the same nginx config in front of three real instances on loopback carries REST and live WebSocket
bars, lets the rate limits see each client's own address, and lets no client tunnel past it
(issue 23, 1 and 12)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import string
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.support.helpers import delete_prefix
from tests.support.live_server import ROOT, free_port, hypercorn_server

DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
TEMPLATE = DEPLOY / "nginx" / "default.conf.template"
NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if Path(p).exists()), None)


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose is not installed (.ci/run installs Debian's package)")
def test_compose_file_is_valid() -> None:
    passwords = {"POSTGRES_PASSWORD": "pg-s3cret", "GRAFANA_PASSWORD": "gf-s3cret"}
    for missing in passwords:  # no fallback password: compose refuses to start without each
        env = {k: v for k, v in {**os.environ, **passwords}.items() if k != missing}
        refused = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config"], capture_output=True,
                                 text=True, timeout=60, check=False, env=env)
        assert refused.returncode != 0 and missing in refused.stderr, refused.stderr
    done = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config"], capture_output=True,
                          text=True, timeout=60, check=False, env={**os.environ, **passwords})
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    services = config["services"]
    assert set(services) == {"timescaledb", "redis", "app1", "app2", "app3", "nginx",
                             "prometheus", "grafana"}
    assert services["timescaledb"]["image"].startswith("timescale/timescaledb:")
    for app in ("app1", "app2", "app3"):
        assert services[app]["environment"]["TRUSTED_PROXIES"]
    assert services["app3"]["environment"]["BACKFILL_RUNNER"] == "false"
    nginx_env = services["nginx"]["environment"]
    assert [nginx_env[f"APP_UPSTREAM_{i}"] for i in (1, 2, 3)] == ["app1:8000", "app2:8000", "app3:8000"]
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == [
        "app1:8000", "app2:8000", "app3:8000"]
    mounts = " ".join(str(v) for v in services["grafana"]["volumes"])
    assert "grafana-dashboard.json" in mounts and "provisioning" in mounts


def test_compose_defaults_are_safe() -> None:
    """No fallback passwords (compose refuses to start without them), dashboards on loopback only,
    and the instances believe X-Forwarded-For only from the compose network (nginx)."""
    text = COMPOSE.read_text()
    compose = yaml.safe_load(text)
    services = compose["services"]
    for var in ("POSTGRES_PASSWORD", "GRAFANA_PASSWORD"):
        assert f"${{{var}:?" in text and f"${{{var}:-" not in text, var
    assert "POSTGRES_PASSWORD:?" in services["timescaledb"]["environment"]["POSTGRES_PASSWORD"]
    assert "POSTGRES_PASSWORD:?" in compose["x-app"]["environment"]["DATABASE_URL"]
    assert "GRAFANA_PASSWORD:?" in services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    for name in ("prometheus", "grafana"):
        assert all(str(p).startswith("127.0.0.1:") for p in services[name]["ports"]), services[name]["ports"]
    env = compose["x-app"]["environment"]
    assert "TRUST_FORWARDED_FOR" not in env and env["TRUSTED_PROXIES"]
    template = TEMPLATE.read_text()
    assert "limit_req " in template and "limit_conn " in template and "ssl_certificate" in template


def render_nginx(workdir: Path, listen: int, upstreams: list[str]) -> Path:
    """The deploy template filled in as the nginx image's envsubst does, in a main config that
    runs unprivileged in ``workdir``."""
    values = {"NGINX_LISTEN": f"127.0.0.1:{listen}",
              **{f"APP_UPSTREAM_{i}": u for i, u in enumerate(upstreams, start=1)}}
    site = string.Template(TEMPLATE.read_text()).safe_substitute(values)
    assert "${" not in site
    (workdir / "site.conf").write_text(site)
    temps = "\n".join(f"    {kind}_temp_path {workdir}/{kind};"
                      for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    main = workdir / "nginx.conf"
    main.write_text(f"""worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
{temps}
    include {workdir}/site.conf;
}}
""")
    return main


@contextmanager
def nginx(main: Path, port: int) -> Iterator[str]:
    assert NGINX is not None
    check = subprocess.run([NGINX, "-t", "-c", str(main), "-p", str(main.parent)],
                           capture_output=True, text=True, timeout=30, check=False)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([NGINX, "-c", str(main), "-p", str(main.parent), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((main.parent / "error.log").read_text()) from None
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Three instances sharing PostgreSQL and Redis, behind nginx; yields nginx's base URL."""
    if NGINX is None:
        pytest.skip("nginx is not installed (.ci/run installs Debian's package)")
    uid = uuid.uuid4().hex[:10]
    schema, prefix = f"t_deploy_{uid}", f"t:deploy:{uid}"
    env = {"DATABASE_SCHEMA": schema, "REDIS_PREFIX": prefix, "TRUSTED_PROXIES": "127.0.0.1",
           "RATE_LIMITS": json.dumps({"default": "5/60"}), "ENABLED_MARKETS": "sim"}
    workdir = tmp_path_factory.mktemp("nginx")
    workdir.chmod(0o755)
    try:
        with ExitStack() as stack:
            bases = [stack.enter_context(hypercorn_server(env)) for _ in range(3)]
            port = free_port()
            main = render_nginx(workdir, port, [b.removeprefix("http://") for b in bases])
            yield stack.enter_context(nginx(main, port))
    finally:
        asyncio.run(delete_prefix_and_schema(prefix, schema))


async def delete_prefix_and_schema(prefix: str, schema: str) -> None:
    import asyncpg

    from tests.conftest import DATABASE_URL, REDIS_URL

    await delete_prefix(REDIS_URL, prefix)
    conn = await asyncpg.connect(DATABASE_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def session_from(address: str) -> aiohttp.ClientSession:
    """A client whose connections come from ``address`` (any 127/8 address is loopback)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


async def test_dashboard_gets_live_bars_through_nginx(cluster: str) -> None:
    url = cluster.replace("http", "ws") + "/api/v1/ws"
    async with session_from("127.0.0.4") as http, http.ws_connect(url) as ws:
        await ws.send_json({"op": "subscribe", "market": "sim", "provider": "sim",
                            "symbol": "SIM/USD", "timeframe": "1m", "history": 5, "id": "c1"})
        frames: list[dict[str, Any]] = []
        deadline = time.monotonic() + 20
        while not any(f["type"] == "bar" for f in frames) and time.monotonic() < deadline:
            frames.append(await ws.receive_json(timeout=max(0.1, deadline - time.monotonic())))
    kinds = [f["type"] for f in frames]
    assert kinds[:2] == ["subscribed", "snapshot"] and kinds[-1] == "bar", kinds
    assert len(frames[1]["bars"]) == 5
    bar = frames[-1]
    assert bar["channel"] == "sim:sim:SIM/USD:1m" and bar["bar"][0] >= frames[1]["bars"][-1][0]


async def test_rest_through_nginx(cluster: str) -> None:
    async with session_from("127.0.0.5") as http:
        url = cluster + "/api/v1/ohlcv?market=sim&provider=sim&symbol=SIM/USD&timeframe=1h&limit=3" \
            "&start=2024-01-01T00:00:00Z"
        async with http.get(url) as r:
            assert r.status == 200 and r.headers["X-Request-ID"]
            body = await r.json()
    assert [b[0] for b in body["bars"]] == [1704067200000, 1704070800000, 1704074400000]


async def test_rate_limits_see_the_real_client_ip(cluster: str) -> None:
    markets = cluster + "/api/v1/markets"
    async with session_from("127.0.0.2") as a, session_from("127.0.0.3") as b:
        statuses = []
        for i in range(6):  # 5/60 per client, shared by the three instances through Redis
            async with a.get(markets, headers={"X-Forwarded-For": f"10.0.0.{i}"}) as r:
                statuses.append(r.status)  # a client's own X-Forwarded-For does not help it
        assert statuses == [200] * 5 + [429]
        async with b.get(markets) as r:
            assert r.status == 200 and r.headers["X-RateLimit-Remaining"] == "4"


async def raw_exchange(base: str, request: bytes, source: str) -> bytes:
    """Send ``request`` on a fresh connection from ``source`` and read what comes back within 3 s."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port), local_addr=(source, 0))
    try:
        writer.write(request)
        await writer.drain()
        got = b""
        try:
            async with asyncio.timeout(3):
                while chunk := await reader.read(65536):
                    got += chunk
                    if b"\r\n\r\n" in got and not got.startswith(b"HTTP/1.1 101"):
                        break
        except TimeoutError:
            pass
        return got
    finally:
        writer.close()


H2C = (b"Host: md\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
       b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")


@pytest.mark.parametrize("path", ["/api/v1/markets", "/api/v1/ws"])
async def test_no_h2c_tunnel_through_nginx(cluster: str, path: str) -> None:
    """Issue 23 (1): "Upgrade: h2c" used to get 101 and an HTTP/2 connection to an instance, on
    which the client picked its own X-Forwarded-For and escaped the rate limits. nginx now forwards
    Upgrade only for WebSocket handshakes on /api/v1/ws."""
    answer = await raw_exchange(cluster, b"GET " + path.encode() + b" HTTP/1.1\r\n" + H2C, "127.0.0.6")
    status = answer.split(b"\r\n", 1)[0]
    assert status.startswith(b"HTTP/1.1 ") and not status.startswith(b"HTTP/1.1 101"), status
    if path == "/api/v1/markets":
        assert status.startswith(b"HTTP/1.1 200")


async def test_nginx_denies_metrics_and_ambiguous_bodies(cluster: str) -> None:
    async with session_from("127.0.0.7") as http, http.get(cluster + "/metrics") as r:
        assert r.status == 403
    # Content-Length and Transfer-Encoding together (request smuggling): refused, connection closed.
    smuggle = (b"POST /api/v1/backfill HTTP/1.1\r\nHost: md\r\nContent-Type: application/json\r\n"
               b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    answer = await raw_exchange(cluster, smuggle, "127.0.0.7")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
    assert b"connection: close" in answer.lower()

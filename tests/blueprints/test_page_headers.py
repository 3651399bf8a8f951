"""The pages' security headers (issue 23, 5): a Content-Security-Policy that allows this origin
only and forbids framing. That the pages still work under it (no console error, no CSP violation)
is checked in a real browser by tests/blueprints/test_page.py."""

from __future__ import annotations

import pytest
from playwright.async_api import Browser, ConsoleMessage
from quart.typing import TestClientProtocol

from tests.support import browser as kit
from tests.support.browser import SIM_PAGE, Watch, live_server

browser, installed, isolated_env = kit.browser, kit.installed, kit.isolated_env  # fixtures


def directives(policy: str) -> dict[str, list[str]]:
    out = {}
    for part in policy.split(";"):
        name, *values = part.split()
        out[name] = values
    return out


@pytest.mark.parametrize("path", ["/", "/api/v1/docs"])
async def test_pages_send_a_csp_and_refuse_framing(client: TestClientProtocol, path: str) -> None:
    r = await client.get(path, headers={"Host": "md.example:8080"})
    assert r.status_code == 200
    csp = directives(r.headers["Content-Security-Policy"])
    assert csp["frame-ancestors"] == ["'none'"] and r.headers["X-Frame-Options"] == "DENY"
    assert csp["default-src"] == ["'self'"] and csp["script-src"] == ["'self'"]
    assert csp["object-src"] == ["'none'"] and csp["base-uri"] == ["'none'"]
    assert csp["connect-src"] == ["'self'", "ws://md.example:8080", "wss://md.example:8080"]


async def test_a_strange_host_header_stays_out_of_the_policy(client: TestClientProtocol) -> None:
    r = await client.get("/", headers={"Host": "evil; script-src *"})
    csp = directives(r.headers["Content-Security-Policy"])
    assert csp["connect-src"] == ["'self'"] and csp["script-src"] == ["'self'"]


@pytest.mark.slow
async def test_the_pages_work_under_their_policy(browser: Browser, isolated_env: dict[str, str]) -> None:
    """In Chromium with the CSP enforced (no bypass): the chart draws and goes live, the docs viewer
    renders, and nothing is refused by the policy."""
    async with live_server(isolated_env) as base:
        for path, ready in ((SIM_PAGE, "#status[data-state='live']"), ("/api/v1/docs", ".opblock")):
            page = await browser.new_page()
            watch = Watch(page)
            violations: list[str] = []

            def csp_report(message: ConsoleMessage, out: list[str] = violations) -> None:
                if "Content Security Policy" in message.text:
                    out.append(message.text)

            page.on("console", csp_report)
            await page.goto(base + path)
            await page.wait_for_selector(ready, timeout=30_000)
            await page.wait_for_selector("canvas" if path == SIM_PAGE else ".opblock-summary")
            assert not violations and not watch.errors, (path, violations, watch.errors)
            await page.close()

"""The browser pages: the live chart at ``/``, the API docs viewer at ``/api/v1/docs`` and the API
reference it links to, ``docs/api.md``, at ``/api/v1/docs/api.md`` (open like the viewer when auth is on).

Everything they load comes from this origin (no CDN, so they work offline): the pages' own files
from ``web/public/``, and a fixed list of files of the npm packages installed from
``web/package-lock.json`` (``npm ci --prefix web``, which ``make run`` and ``make test`` do) under
``/assets/vendor/``. Nothing else of ``node_modules`` is reachable.

The pages carry a Content-Security-Policy that allows only that: scripts, styles, images and
connections (REST and the WebSocket) of this origin, and no framing (``frame-ancestors 'none'``,
with ``X-Frame-Options: DENY`` for older browsers), so an injected script or a hostile site that
frames the page gets nowhere.
"""

from __future__ import annotations

import re
from pathlib import Path

from quart import Blueprint, Response, request, send_file, send_from_directory

from core.errors import APIError, NotFound

WEB = Path(__file__).resolve().parent.parent / "web"
PUBLIC = WEB / "public"
MODULES = WEB / "node_modules"
DOCS = WEB.parent / "docs"
#: Served name -> file under web/node_modules (the dist files the pages use, and their licences).
VENDOR = {
    "lightweight-charts.mjs": "lightweight-charts/dist/lightweight-charts.standalone.production.mjs",
    "lightweight-charts.LICENSE.txt": "lightweight-charts/LICENSE",
    "swagger-ui-bundle.js": "swagger-ui-dist/swagger-ui-bundle.js",
    "swagger-ui.css": "swagger-ui-dist/swagger-ui.css",
    "swagger-ui.LICENSE.txt": "swagger-ui-dist/LICENSE",
    "swagger-ui.NOTICE.txt": "swagger-ui-dist/NOTICE",
}
_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css", ".txt": "text/plain",
          ".html": "text/html", ".md": "text/plain"}
#: Our own files change with a deploy: revalidate (ETag) each time. Vendor files change only
#: with the lockfile: cache them for an hour.
_OWN_CACHE = "no-cache"
_VENDOR_CACHE = "public, max-age=3600"

#: The pages' policy; ``{ws}`` is this origin's WebSocket (CSP 'self' matches ws: only in CSP 3
#: browsers). Inline styles: the docs page's own ``<style>`` and Swagger UI's (no inline scripts).
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "font-src 'self' data:; connect-src 'self'{ws}; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'")
_HOST = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")

page_blueprint = Blueprint("page", __name__)


def _typed(response: Response, name: str, cache: str) -> Response:
    kind = _TYPES.get(Path(name).suffix)
    if kind is not None:  # .mjs included: browsers refuse a module script of another type
        response.headers["Content-Type"] = f"{kind}; charset=utf-8"
    response.headers["Cache-Control"] = cache
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _page(response: Response, name: str) -> Response:
    """A page's answer: typed, revalidated, with its CSP and no framing."""
    host = request.host
    ws = f" ws://{host} wss://{host}" if _HOST.match(host) else ""
    response.headers["Content-Security-Policy"] = _CSP.format(ws=ws)
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    return _typed(response, name, _OWN_CACHE)


@page_blueprint.get("/")
async def chart_page() -> Response:
    return _page(await send_from_directory(PUBLIC, "index.html"), "index.html")


@page_blueprint.get("/api/v1/docs")
async def docs_page() -> Response:
    return _page(await send_from_directory(PUBLIC, "docs.html"), "docs.html")


@page_blueprint.get("/api/v1/docs/api.md")
async def api_reference() -> Response:
    """The project's API reference (docs/api.md), which the docs viewer links to, as plain text."""
    return _typed(await send_file(DOCS / "api.md"), "api.md", _OWN_CACHE)


@page_blueprint.get("/assets/NOTICE.txt")
async def notice() -> Response:
    return _typed(await send_file(WEB / "NOTICE"), "NOTICE.txt", _OWN_CACHE)


@page_blueprint.get("/assets/<name>")
async def own_asset(name: str) -> Response:
    if name.endswith(".html"):  # the pages have their own routes
        raise NotFound(f"no asset {name!r}")
    return _typed(await send_from_directory(PUBLIC, name), name, _OWN_CACHE)


@page_blueprint.get("/assets/vendor/<name>")
async def vendor_asset(name: str) -> Response:
    relative = VENDOR.get(name)
    if relative is None:
        raise NotFound(f"no vendor asset {name!r}")
    try:
        response = await send_file(MODULES / relative)
    except FileNotFoundError as exc:
        raise APIError(503, "dependency_unavailable", "the page's npm packages are not installed: "
                       "run `npm ci --prefix web` (make run does)") from exc
    return _typed(response, name, _VENDOR_CACHE)

"""The operations dashboard: a static page and its scripts, same-origin with the API it calls.

The page holds no secret: it asks for an API key and calls the public API and the hub like any client.
Nothing is fetched from outside the stack (no CDN): the scripts are these files and the hub's client.js.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from ..deps import SettingsDep
from ..errors import ApiError, not_found

router = APIRouter(tags=["dashboard"])

STATIC = Path(__file__).resolve().parent.parent / "static"
DASHBOARD = STATIC / "dashboard.html"
ASSETS = STATIC / "dashboard"
_ASSET_NAME = re.compile(r"[a-z][a-z0-9_-]{0,40}\.(js|css|png)")
_TYPES = {"js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8", "png": "image/png"}
# The page runs only its own scripts and the hub's client.js; it talks only to itself and the hub.
_CSP = "default-src 'self'; script-src 'self' {hub}; connect-src 'self' {hub} {ws}; img-src 'self' data:; " \
       "style-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


def _ws(url: str) -> str:
    return "wss://" + url[8:] if url.startswith("https://") else "ws://" + url.removeprefix("http://")


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
def dashboard(settings: SettingsDep) -> HTMLResponse:
    """No auth: the page asks for an API key and calls the API itself."""
    try:
        page = DASHBOARD.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ApiError(404, "the dashboard is not installed in this build") from None
    hub = settings.hub_public_url.rstrip("/")
    headers = {"Cache-Control": "no-cache", "Content-Security-Policy": _CSP.format(hub=hub, ws=_ws(hub)),
               "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
    return HTMLResponse(page.replace("{{HUB_URL}}", hub), headers=headers)


@router.get("/dashboard/static/{name}", include_in_schema=False)
def dashboard_asset(name: str) -> Response:
    """One of the page's own scripts or styles (a fixed set of names; never a path)."""
    match = _ASSET_NAME.fullmatch(name)
    path = ASSETS / name
    if match is None or not path.is_file():
        raise not_found("dashboard file", name)
    return Response(path.read_bytes(), media_type=_TYPES[match.group(1)],
                    headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

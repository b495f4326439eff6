"""The dashboard page (written by the hub team; served here, same-origin with the API)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from ..deps import SettingsDep
from ..errors import ApiError

router = APIRouter(tags=["dashboard"])

DASHBOARD = Path(__file__).resolve().parent.parent / "static" / "dashboard.html"


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
def dashboard(settings: SettingsDep) -> HTMLResponse:
    """No auth: the page asks for an API key and calls the API itself."""
    try:
        page = DASHBOARD.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ApiError(404, "the dashboard is not installed in this build") from None
    return HTMLResponse(page.replace("{{HUB_URL}}", settings.hub_public_url), headers={"Cache-Control": "no-cache"})

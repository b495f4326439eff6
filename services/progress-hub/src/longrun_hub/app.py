"""`create_app(settings)`: the hub's Starlette app. The lifespan builds the Hub (Redis clients, listener)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from longrun_common.settings import Settings

from .hub import Hub, SeamHook
from .metrics import HubMetrics
from .sse import job_events
from .ws import JobSocket, MuxSocket

JS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Cache-Control": "public, max-age=300",
    "X-Content-Type-Options": "nosniff",
}


def create_app(settings: Settings, *, seam_hook: SeamHook | None = None) -> Starlette:
    """The hub app for these settings; `seam_hook` lets tests pause inside the seam."""
    metrics = HubMetrics()
    client_js = (files("longrun_hub") / "static" / "client.js").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        hub = Hub(settings, metrics, seam_hook=seam_hook)
        app.state.hub = hub
        await hub.start()
        try:
            yield
        finally:
            await hub.drain("shutdown", grace=min(settings.hub_shutdown_grace, 1.0))
            await hub.stop()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        hub: Hub = request.app.state.hub
        checks = {"redis": await hub.ping_redis(), "pubsub": hub.feed.connected, "accepting": hub.accepting}
        if all(checks.values()):
            return JSONResponse({"status": "ready", "checks": checks})
        failing = ", ".join(name for name, ok in checks.items() if not ok)
        body = {"error": {"code": "unavailable", "message": f"not ready: {failing}", "details": checks}}
        return JSONResponse(body, status_code=503)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def client_module(request: Request) -> Response:
        return Response(client_js, media_type="text/javascript; charset=utf-8", headers=JS_HEADERS)

    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        Route("/v1/client.js", client_module),
        Route("/v1/jobs/{job_id}/events", job_events),
        WebSocketRoute("/v1/ws/jobs/{job_id}", JobSocket()),
        WebSocketRoute("/v1/ws", MuxSocket()),
    ]
    middleware = [
        Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET"],
                   allow_headers=["Authorization", "Last-Event-ID"], max_age=600),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    return app

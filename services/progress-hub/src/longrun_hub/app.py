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
from starlette.types import Receive, Scope, Send

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


JOB_SOCKET_PREFIX = "/v1/ws/jobs/"


class HubApp(Starlette):
    """Starlette, except that the two WebSocket endpoints are dispatched by path before the router and the
    middleware stack (CORS only concerns HTTP; error handling there only re-raises). Each idle socket then holds
    one coroutine frame instead of one per middleware layer, and each frame sent goes straight to uvicorn.
    Any other WebSocket path goes through Starlette as before (its router closes it)."""

    job_socket: JobSocket
    mux_socket: MuxSocket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            path: str = scope["path"]
            root_path: str = scope.get("root_path", "")
            if root_path and path.startswith(root_path):  # as Starlette's router matches
                path = path[len(root_path):]
            if path == "/v1/ws":
                scope["app"] = self
                scope["path_params"] = {}
                await self.mux_socket(scope, receive, send)
                return
            if path.startswith(JOB_SOCKET_PREFIX):
                job_id = path[len(JOB_SOCKET_PREFIX):]
                if job_id and "/" not in job_id:  # Starlette's `{job_id}` matches [^/]+
                    scope["app"] = self
                    scope["path_params"] = {"job_id": job_id}
                    await self.job_socket(scope, receive, send)
                    return
        await super().__call__(scope, receive, send)


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

    job_socket, mux_socket = JobSocket(), MuxSocket()
    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        Route("/v1/client.js", client_module),
        Route("/v1/jobs/{job_id}/events", job_events),
        WebSocketRoute("/v1/ws/jobs/{job_id}", job_socket),
        WebSocketRoute("/v1/ws", mux_socket),
    ]
    middleware = [
        Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET"],
                   allow_headers=["Authorization", "Last-Event-ID"], max_age=600),
    ]
    app = HubApp(routes=routes, middleware=middleware, lifespan=lifespan)
    app.job_socket, app.mux_socket = job_socket, mux_socket
    app.state.settings = settings
    app.state.metrics = metrics
    return app

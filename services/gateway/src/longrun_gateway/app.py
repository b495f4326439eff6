"""The gateway application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from longrun_common import telemetry
from longrun_common.settings import Settings

from .contract import install_openapi
from .errors import install_error_handlers
from .metrics import Metrics
from .middleware import BodyLimitMiddleware, MetricsMiddleware
from .openapi_catalog import CatalogDocument, serve_openapi_off_loop
from .routes import ROUTERS
from .state import Gateway, State


def create_app(settings: Settings) -> FastAPI:
    """A gateway for `settings`; clients are built by the lifespan, never at import."""
    metrics = Metrics()
    running: dict[str, Gateway] = {}  # the lifespan's gateway, for the OpenAPI document's catalog reads

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[State]:
        gateway = Gateway.build(settings, metrics)
        await gateway.start()
        running["gateway"] = gateway
        try:
            yield {"gateway": gateway}
        finally:
            running.pop("gateway", None)
            await gateway.aclose()

    app = FastAPI(
        title="Longrun gateway",
        version="1",
        description="Submit long jobs, follow their progress, manage files and dead letters.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    install_openapi(app)
    # The served document types each task's args from the catalog (openapi_catalog.py), which is read from
    # SQL: /openapi.json is served from the thread pool, never blocking the event loop on that read.
    catalog_document = CatalogDocument(app.openapi, lambda: running["gateway"].engine if running else None)
    app.openapi = catalog_document.get  # type: ignore[method-assign]
    serve_openapi_off_loop(app)
    # Outermost last: metrics see every response, including a 413 from the body limit.
    app.add_middleware(BodyLimitMiddleware, settings=settings)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    for router in ROUTERS:
        app.include_router(router)
    telemetry.instrument_fastapi(app)  # server spans, when the entry point set up tracing
    return app


def create_app_from_env() -> FastAPI:
    """A gateway on settings from the environment: the factory each uvicorn worker process calls."""
    telemetry.setup_tracing("longrun-gateway", celery=True)
    return create_app(Settings())

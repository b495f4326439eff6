"""Liveness, readiness and metrics: no auth, cheap, never a 500."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from longrun_common.redis_clients import AsyncRedis

from ..contract import Health, Readiness, error_responses, ok
from ..deps import GatewayDep
from ..state import Gateway

router = APIRouter(tags=["health"])

CHECK_TIMEOUT = 3.0


@router.get("/healthz", response_model=None, responses=ok(200, Health))
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=None,
    responses={**ok(200, Readiness, "ready"), **ok(503, Readiness, "a dependency does not answer")},
)
async def readyz(gateway: GatewayDep) -> JSONResponse:
    """200 when the database and Redis answer (and the broker, when it is a Redis of its own); 503 naming what
    does not."""
    names = ["database", "redis"]
    pending = [_check_database(gateway), _check_redis(gateway.aredis)]
    if gateway.abroker is not None:  # a submit sends to the broker: a gateway that cannot reach it is not ready
        names.append("broker")
        pending.append(_check_redis(gateway.abroker))
    checks = dict(zip(names, await asyncio.gather(*pending), strict=True))
    ok = all(value == "ok" for value in checks.values())
    body: dict[str, Any] = {"status": "ok" if ok else "unavailable", "checks": checks}
    return JSONResponse(body, status_code=200 if ok else 503)


async def _check_database(gateway: Gateway) -> str:
    def ping() -> None:
        with gateway.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    try:
        await asyncio.wait_for(run_in_threadpool(ping), CHECK_TIMEOUT)
    except TimeoutError:
        return f"error: no answer within {CHECK_TIMEOUT:g}s"
    except Exception as exc:  # report any failure; readiness must not raise
        return _describe(exc)
    return "ok"


async def _check_redis(client: AsyncRedis) -> str:
    try:
        await asyncio.wait_for(client.ping(), CHECK_TIMEOUT)
    except TimeoutError:
        return f"error: no answer within {CHECK_TIMEOUT:g}s"
    except Exception as exc:  # report any failure; readiness must not raise
        return _describe(exc)
    return "ok"


def _describe(exc: BaseException) -> str:
    # The first line only: enough for an operator, no stack or SQL text.
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"error: {type(exc).__name__}" + (f": {message[:200]}" if message else "")


@router.get(
    "/metrics",
    response_class=Response,  # not JSON: the one documented content type is Prometheus' own
    response_model=None,
    responses={**ok(200, None, "Prometheus text exposition", media_type=CONTENT_TYPE_LATEST), **error_responses(503)},
)
def metrics(gateway: GatewayDep) -> Response:
    """Prometheus exposition; dead-letter gauges are computed from SQL now."""
    return Response(gateway.metrics.render(), media_type=CONTENT_TYPE_LATEST)

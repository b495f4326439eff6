"""The OpenAPI document follows the task catalog: `POST /v1/jobs` (and each job of a batch) is a union over the
known tasks, discriminated by `task`, each with that task's args schema, so generated clients get typed args.

The catalog lives in SQL and changes when a redeployed worker registers it, so the typed document is rebuilt
when the catalog's rows change, looked at no more often than every CATALOG_TTL_SECONDS (one small SELECT).
Without a catalog (no worker has registered yet, or no database, as when the document is built offline) the
document keeps the generic body (`args` any object).
"""

from __future__ import annotations

import copy
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from jsonschema import Draft202012Validator
from sqlalchemy import Engine
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool
from starlette.routing import Route

from longrun_common.models import TaskRecord

from .batch import MAX_BATCH, BatchRequest
from .submission import CATALOG_TTL_SECONDS, JobRequest

log = logging.getLogger(__name__)

_NAME = re.compile(r"[^A-Za-z0-9._-]")  # OpenAPI component names: ^[a-zA-Z0-9._-]+$
_REF_PREFIX = "#/components/schemas/"


@dataclass(frozen=True)
class CatalogTask:
    name: str
    description: str
    args_schema: dict[str, Any]
    version: str  # changes when a worker rewrites the row


def read_catalog(engine: Engine) -> list[CatalogTask]:
    with Session(engine) as session:
        rows = session.exec(select(TaskRecord).order_by(col(TaskRecord.name))).all()
    return [CatalogTask(r.name, r.description or "", dict(r.args_schema or {}), str(r.updated_at)) for r in rows]


def typed_document(base: dict[str, Any], tasks: Sequence[CatalogTask]) -> dict[str, Any]:
    """`base` with per-task components and the job bodies as a discriminated union over `tasks`."""
    doc = copy.deepcopy(base)
    schemas: dict[str, Any] = doc.setdefault("components", {}).setdefault("schemas", {})
    mapping: dict[str, str] = {}
    for task in tasks:
        if not _valid(task):
            continue
        key = _unique(f"task.{_NAME.sub('_', task.name)}", schemas)
        schemas[f"{key}.args"] = _hoist_defs(task.args_schema, f"{key}.args", schemas)
        request = JobRequest.model_json_schema()
        request["title"] = f"{task.name} job"
        request["description"] = task.description or f"a `{task.name}` job"
        request["properties"]["task"] = {"type": "string", "const": task.name, "title": "Task"}
        request["properties"]["args"] = {"$ref": f"{_REF_PREFIX}{key}.args"}
        schemas[f"{key}.job"] = request
        mapping[task.name] = f"{_REF_PREFIX}{key}.job"
    if not mapping:
        return doc
    job_body = {"oneOf": [{"$ref": ref} for ref in mapping.values()],
                "discriminator": {"propertyName": "task", "mapping": mapping}}
    batch = BatchRequest.model_json_schema()
    batch.pop("$defs", None)
    batch["properties"]["jobs"] = {"type": "array", "minItems": 1, "maxItems": MAX_BATCH, "items": job_body,
                                   "title": "Jobs"}
    _set_body(doc, "/v1/jobs", job_body)
    _set_body(doc, "/v1/jobs:batch", batch)
    return doc


def _valid(task: CatalogTask) -> bool:
    try:
        Draft202012Validator.check_schema(task.args_schema)
    except Exception:  # the submit path answers 503 for it; the document just leaves the task out
        log.warning("task %s has an invalid args schema; left out of the OpenAPI document", task.name)
        return False
    return True


def _unique(key: str, schemas: dict[str, Any]) -> str:
    candidate, n = key, 1
    while f"{candidate}.args" in schemas:
        n += 1
        candidate = f"{key}_{n}"
    return candidate


def _hoist_defs(schema: dict[str, Any], owner: str, schemas: dict[str, Any]) -> dict[str, Any]:
    """The schema as a component: its local `$defs` become components named after `owner` (a `#/$defs/X` ref
    would otherwise point at the root of the OpenAPI document)."""
    schema = copy.deepcopy(schema)
    defs = schema.pop("$defs", {})
    renamed = {name: f"{owner}.{_NAME.sub('_', name)}" for name in defs}

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/") and ref[8:] in renamed:
                node = {**node, "$ref": _REF_PREFIX + renamed[ref[8:]]}
            return {k: rewrite(v) for k, v in node.items()}
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    for name, definition in defs.items():
        schemas[renamed[name]] = rewrite(definition)
    result: dict[str, Any] = rewrite(schema)
    return result


def _set_body(doc: dict[str, Any], path: str, schema: dict[str, Any]) -> None:
    body = doc.get("paths", {}).get(path, {}).get("post", {}).get("requestBody")
    if body is not None:
        body["content"]["application/json"]["schema"] = schema


class CatalogDocument:
    """The typed document, rebuilt when the catalog's rows change (checked at most every `ttl` seconds)."""

    def __init__(self, base: Callable[[], dict[str, Any]], engine: Callable[[], Engine | None],
                 ttl: float = CATALOG_TTL_SECONDS) -> None:
        self._base = base
        self._engine = engine
        self._ttl = ttl
        self._lock = threading.Lock()
        self._checked = float("-inf")
        self._version: tuple[tuple[str, str], ...] | None = None
        self._doc: dict[str, Any] | None = None

    def get(self) -> dict[str, Any]:
        engine = self._engine()
        if engine is None:  # no lifespan (built offline): the generic document
            return self._base()
        with self._lock:
            now = time.monotonic()
            if self._doc is None or now - self._checked >= self._ttl:
                self._checked = now
                try:
                    tasks = read_catalog(engine)
                except Exception:  # the database is down: keep serving the last document
                    log.warning("could not read the task catalog for the OpenAPI document", exc_info=True)
                    return self._doc or self._base()
                version = tuple((t.name, t.version) for t in tasks)
                if version != self._version or self._doc is None:
                    self._doc, self._version = typed_document(self._base(), tasks), version
            return self._doc


def serve_openapi_off_loop(app: FastAPI) -> None:
    """Replace FastAPI's `/openapi.json` route (which calls `app.openapi()` on the event loop) by one that calls
    it in the thread pool, since building the typed document may read SQL."""
    url = app.openapi_url
    if not url:
        return
    app.router.routes[:] = [r for r in app.router.routes if not (isinstance(r, Route) and r.path == url)]

    async def openapi_json(_request: Any) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(app.openapi))

    app.add_route(url, openapi_json, include_in_schema=False)

"""The OpenAPI contract: what each route returns, documented by one mechanism.

Errors. Every error is the one envelope `{"error": {"code", "message", "details"}}` (errors.py); its schema is
the `Error` component. A route lists the error statuses it can answer with `error_responses(...)`, which
gives each the `Error` schema, a description and its headers (`WWW-Authenticate` on 401, `Retry-After` on
429/503). For a new route:

    @router.get("/{key_id}", responses={**ok(200, KeyView), **error_responses(401, 404, 503)})

Listing 422 replaces FastAPI's own `{"detail": [...]}` 422, which the gateway never sends (a route with
parameters must list 422 for that reason, or the app's schema check fails: see tests).

Success bodies are documented with `ok(status, Model, headers=...)`: the models below describe the JSON the
handlers build (they are documentation only; handlers return plain dicts, so nothing is re-validated at run
time). Whole-document parts — the bearer security scheme of /v1 and the `OPTIONS` answer of every path —
are added once by `install_openapi(app)`.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field

from longrun_common.states import JobStatus

# --- errors ---------------------------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. `validation_error`, `not_found`")
    message: str = Field(description="what went wrong, for a human; a 422 names the field: `field: problem`")
    details: Any = Field(None, description="structured context: for a 422, a list of `{field, message, value?}`")


class Error(BaseModel):
    """The one error envelope every error status uses."""

    model_config = ConfigDict(title="Error")

    error: ErrorBody


_ERRORS: dict[int, str] = {
    401: "missing, malformed, unknown, expired or revoked API key (`Authorization: Bearer <key>`)",
    403: "the API key lacks the scope this route needs (`admin` for /v1/admin)",
    404: "no such resource for this tenant (another tenant's resource is indistinguishable from a missing one)",
    409: "the request conflicts with the resource's state or with an earlier use of its Idempotency-Key",
    413: "the request body is larger than the configured limit",
    422: "a parameter or the body is invalid; `message` and `details` name the field",
    429: "the tenant submits faster than its rate limit; retry after `Retry-After` seconds",
    503: "a dependency (Redis, the database, the task catalog) is unavailable; retry shortly",
}
_RETRY_AFTER = {"description": "seconds to wait before retrying", "schema": {"type": "integer", "minimum": 1}}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer realm=\"longrun\"`", "required": True,
                               "schema": {"type": "string"}}},
    429: {"Retry-After": {**_RETRY_AFTER, "required": True}},
    503: {"Retry-After": _RETRY_AFTER},
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` entries for these error statuses: the `Error` schema, a description, the headers."""
    result: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": Error, "description": _ERRORS[status]}
        if status in _HEADERS:
            entry["headers"] = _HEADERS[status]
        result[status] = entry
    return result


LOCATION = {"Location": {"description": "the resource's URL", "required": True, "schema": {"type": "string"}}}


def ok(status: int, model: type[BaseModel] | None, description: str = "",
       headers: dict[str, Any] | None = None, media_type: str | None = None) -> dict[int | str, dict[str, Any]]:
    """The `responses=` entry of a success status: its JSON model (None: no body), description and headers."""
    entry: dict[str, Any] = {"description": description or "success"}
    if model is not None and media_type is None:
        entry["model"] = model
    if media_type is not None:
        entry["content"] = {media_type: {"schema": {"type": "string"}}}
    if headers:
        entry["headers"] = headers
    return {status: entry}


# --- success bodies -----------------------------------------------------------------------------------------


class StreamLinks(BaseModel):
    token: str
    ws_url: str
    sse_url: str


class JobView(BaseModel):
    """A job: its SQL record overlaid with the live Redis snapshot."""

    id: str
    task: str
    tenant: str
    queue: str
    priority: int
    status: JobStatus
    progress: dict[str, Any]
    seq: int
    attempt: int
    max_attempts: int
    result: Any = None
    error: dict[str, Any] | None
    args: dict[str, Any]
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    updated_at: str | None
    next_retry_at: str | None
    cancel_requested: bool
    run_at: str | None = Field(None, description="a delayed job's release time; null once released")
    queued_reason: str | None = Field(
        None,
        description="why a queued job waits: waiting_for_dependencies, delayed, fair_share, tenant_concurrency_limit",
    )
    kind: Literal["job", "workflow"] = Field("job", description="`workflow`: a chain/group/chord node of a workflow")
    parent_id: str | None = Field(None, description="the workflow node this step belongs to (null: a plain job)")
    root_id: str | None = Field(None, description="the workflow's root job (null: a plain job)")
    stream: StreamLinks


class JobPage(BaseModel):
    items: list[JobView]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class JobBatch(BaseModel):
    items: list[JobView] = Field(description="the accepted jobs, in the order they were submitted")


class TaskEntry(BaseModel):
    name: str
    description: str
    args_schema: dict[str, Any] = Field(description="JSON Schema (2020-12) of the task's args")
    policy: dict[str, Any]


class TaskList(BaseModel):
    tasks: list[TaskEntry]


class StreamToken(BaseModel):
    token: str
    expires_at: str
    ws_url: str
    sse_url: str | None = Field(None, description="only for a job's token")


class StoredFileView(BaseModel):
    id: str
    name: str
    size: int
    sha256: str
    content_type: str | None = Field(None, description="on GET only")
    created_at: str | None = Field(None, description="on GET only")


class DeadLetterView(BaseModel):
    id: str
    job_id: str
    task: str
    error: dict[str, Any]
    attempts: int
    failed_at: str | None
    job: JobView | None


class AttemptView(BaseModel):
    attempt: int
    status: str | None
    worker: str | None
    error: dict[str, Any] | None
    started_at: str | None
    finished_at: str | None


class DeadLetterDetail(DeadLetterView):
    traceback: str | None
    history: list[AttemptView]


class DeadLetterPage(BaseModel):
    items: list[DeadLetterView]
    next_cursor: str | None


class Requeued(BaseModel):
    requeued: list[str] = Field(description="ids of the jobs requeued")


class Deleted(BaseModel):
    deleted: int = Field(description="how many dead letters were deleted")


class QueueView(BaseModel):
    name: str
    queued: int
    running: int
    retrying: int
    oldest_wait_seconds: float | None = Field(description="the longest a due job of this queue has waited")


class QueuePage(BaseModel):
    items: list[QueueView]
    next_cursor: str | None


class WorkerView(BaseModel):
    hostname: str
    running: int = Field(description="how many of the caller's jobs this worker is running")


class WorkerPage(BaseModel):
    items: list[WorkerView]
    next_cursor: str | None


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str = Field(description="`ok` or `unavailable`")
    checks: dict[str, str] = Field(description="`ok` or `error: …` per dependency (database, redis, and "
                                              "broker when LONGRUN_BROKER_URL names a Redis of its own)")


# --- the document -------------------------------------------------------------------------------------------

_METHODS = ("get", "put", "post", "delete", "patch", "head")


ALLOW_PATTERN = r"^([A-Z]+, )*OPTIONS$"


def allow_header(methods: set[str]) -> str:
    """`Allow` for a path with these methods, in one fixed order, OPTIONS last (it is always answered)."""
    return ", ".join([*(m.upper() for m in _METHODS if m.upper() in methods), "OPTIONS"])


def install_openapi(app: FastAPI) -> None:
    """Generate the document once, with the parts no single route owns."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            _drop_fastapi_422(schema)
            _add_security(schema)
            _add_options(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise


def _drop_fastapi_422(schema: dict[str, Any]) -> None:
    """FastAPI documents `{"detail": [...]}` as the 422 of every route with parameters; the gateway never sends
    it. A route that can answer 422 lists it with error_responses (the Error schema), which FastAPI keeps."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            content = responses.get("422", {}).get("content", {}).get("application/json", {})
            if content.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                del responses["422"]
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)


def _add_security(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})["apiKey"] = {
        "type": "http", "scheme": "bearer", "description": "a tenant's API key: `Authorization: Bearer <key>`"}
    for path, operations in schema.get("paths", {}).items():
        if path.startswith("/v1/"):
            for method in _METHODS:
                if method in operations:
                    operations[method]["security"] = [{"apiKey": []}]


def _add_options(schema: dict[str, Any]) -> None:
    """Every path answers OPTIONS (no auth) with 204 and `Allow` listing all of its methods (errors.py)."""
    for operations in schema.get("paths", {}).values():
        methods = [m.upper() for m in _METHODS if m in operations]
        allow = allow_header(set(methods))
        # A templated path's parameters must be declared by every operation on it (an OpenAPI rule).
        parameters = {p["name"]: p for m in methods for p in operations[m.lower()].get("parameters", [])
                      if p.get("in") == "path"}
        operations["options"] = {
            "summary": "Methods of this path",
            "parameters": list(parameters.values()),
            "operationId": f"options_{'_'.join(operations[m.lower()]['operationId'] for m in methods)}",
            "responses": {"204": {
                "description": f"no body; `Allow: {allow}`",
                # Not an enum: a concrete URL may match two templates (GET /v1/dead-letters/requeue is the
                # GET of /v1/dead-letters/{letter_id}), and Allow lists what the URL really accepts.
                "headers": {"Allow": {"required": True, "description": f"every method of the URL: {allow}",
                                      "schema": {"type": "string", "pattern": ALLOW_PATTERN}}},
            }},
        }

"""The API's operations as plain request descriptions, shared by the sync and the async client.

Each function returns a `Call`: what to send and how to read the answer. The clients only execute calls
(with retries), so both speak exactly the same API.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx

from .models import ApiKey, DeadLetter, Job, Page, StoredFile, TaskInfo

T = TypeVar("T")

Params = dict[str, str | int | float]


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Params | None = None
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    file: Path | None = None
    idempotent: bool = False  # safe to send again after a lost answer (GET, or an Idempotency-Key)
    timeout: float | None = None


def _job(r: httpx.Response) -> Job:
    return Job.from_dict(r.json())


def _jobs(r: httpx.Response) -> Page[Job]:
    return Page.parse(r.json(), Job.from_dict)


def _json(r: httpx.Response) -> Any:
    return r.json()


def _none(r: httpx.Response) -> None:
    return None


def _filters(**values: Any) -> Params:
    """Query parameters without the unset ones (the API treats an absent filter as 'any')."""
    return {k: v for k, v in values.items() if v is not None and v != ""}


def new_idempotency_key() -> str:
    return f"lr-{uuid.uuid4()}"


# --- jobs ------------------------------------------------------------------------------------------------------


def submit(task: str, args: dict[str, Any] | None = None, *, queue: str | None = None, priority: int | None = None,
           delay: float | None = None, run_at: str | None = None, time_limit: float | None = None,
           soft_time_limit: float | None = None, idempotency_key: str | None = None) -> Call[Job]:
    body: dict[str, Any] = {"task": task, "args": args or {}}
    body.update(_filters(queue=queue, priority=priority, delay=delay, run_at=run_at, time_limit=time_limit,
                         soft_time_limit=soft_time_limit))
    # A key made once per call: every retry of this call sends the same one, so it never makes two jobs.
    key = idempotency_key or new_idempotency_key()
    return Call("POST", "/v1/jobs", _job, json=body, headers={"Idempotency-Key": key}, idempotent=True)


def get(job_id: str, *, wait: float | None = None, after_seq: int | None = None) -> Call[Job]:
    timeout = wait + 15 if wait else None
    return Call("GET", f"/v1/jobs/{job_id}", _job, params=_filters(wait=wait, after_seq=after_seq),
                idempotent=True, timeout=timeout)


def list_jobs(*, status: str | None = None, task: str | None = None, limit: int | None = None,
              cursor: str | None = None) -> Call[Page[Job]]:
    return Call("GET", "/v1/jobs", _jobs, params=_filters(status=status, task=task, limit=limit, cursor=cursor),
                idempotent=True)


def cancel(job_id: str) -> Call[Job | None]:
    def parse(r: httpx.Response) -> Job | None:
        body = r.json() if r.content else None
        return Job.from_dict(body) if isinstance(body, dict) and "id" in body else None

    return Call("POST", f"/v1/jobs/{job_id}/cancel", parse, idempotent=True)


def children(job_id: str, *, limit: int | None = None, cursor: str | None = None) -> Call[Page[Job]]:
    return Call("GET", f"/v1/jobs/{job_id}/children", _jobs, params=_filters(limit=limit, cursor=cursor),
                idempotent=True)


def stream_token(job_id: str | None = None) -> Call[dict[str, Any]]:
    path = f"/v1/jobs/{job_id}/stream-token" if job_id else "/v1/stream-token"
    return Call("POST", path, _json, idempotent=True)


def submit_workflow(spec: dict[str, Any], *, on_failure: str | None = None,
                    idempotency_key: str | None = None) -> Call[Job]:
    body: dict[str, Any] = {"spec": spec, **_filters(on_failure=on_failure)}
    key = idempotency_key or new_idempotency_key()
    return Call("POST", "/v1/workflows", _job, json=body, headers={"Idempotency-Key": key}, idempotent=True)


# --- tasks and files --------------------------------------------------------------------------------------------


def tasks() -> Call[list[TaskInfo]]:
    return Call("GET", "/v1/tasks", lambda r: [TaskInfo.from_dict(t) for t in r.json()["tasks"]], idempotent=True)


def upload(path: Path) -> Call[StoredFile]:
    return Call("POST", "/v1/files", lambda r: StoredFile.from_dict(r.json()), file=path, timeout=600)


def file_info(file_id: str) -> Call[StoredFile]:
    return Call("GET", f"/v1/files/{file_id}", lambda r: StoredFile.from_dict(r.json()), idempotent=True)


# --- dead letters -----------------------------------------------------------------------------------------------


def dead_letters(*, task: str | None = None, error_type: str | None = None, limit: int | None = None,
                 cursor: str | None = None) -> Call[Page[DeadLetter]]:
    params = _filters(task=task, error_type=error_type, limit=limit, cursor=cursor)
    return Call("GET", "/v1/dead-letters", lambda r: Page.parse(r.json(), DeadLetter.from_dict), params=params,
                idempotent=True)


def dead_letter(letter_id: str) -> Call[DeadLetter]:
    return Call("GET", f"/v1/dead-letters/{letter_id}", lambda r: DeadLetter.from_dict(r.json()), idempotent=True)


def requeue(letter_id: str) -> Call[Job]:
    return Call("POST", f"/v1/dead-letters/{letter_id}/requeue", _job)


def requeue_many(*, task: str | None = None, error_type: str | None = None,
                 limit: int | None = None) -> Call[list[str]]:
    body = _filters(task=task, error_type=error_type, limit=limit)
    return Call("POST", "/v1/dead-letters/requeue", lambda r: list(r.json()["requeued"]), json=body)


def delete_dead_letter(letter_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/dead-letters/{letter_id}", _none, idempotent=True)


def delete_dead_letters(*, task: str | None = None, error_type: str | None = None,
                        limit: int | None = None) -> Call[Any]:
    """`DELETE /v1/dead-letters?…`: the same filters as the bulk requeue; answers what was deleted."""
    params = _filters(task=task, error_type=error_type, limit=limit)
    return Call("DELETE", "/v1/dead-letters", lambda r: r.json() if r.content else None, params=params,
                idempotent=True)


# --- API keys (admin scope) -------------------------------------------------------------------------------------


def _key(r: httpx.Response) -> ApiKey:
    return ApiKey.from_dict(r.json())


def create_key(name: str, *, scopes: list[str] | None = None, expires_in: int | None = None) -> Call[ApiKey]:
    body: dict[str, Any] = {"name": name, **_filters(expires_in=expires_in)}
    if scopes:
        body["scopes"] = scopes
    return Call("POST", "/v1/admin/keys", _key, json=body)


def list_keys(*, limit: int | None = None, cursor: str | None = None) -> Call[Page[ApiKey]]:
    return Call("GET", "/v1/admin/keys", lambda r: Page.parse(r.json(), ApiKey.from_dict),
                params=_filters(limit=limit, cursor=cursor), idempotent=True)


def get_key(key_id: str) -> Call[ApiKey]:
    return Call("GET", f"/v1/admin/keys/{key_id}", _key, idempotent=True)


def rotate_key(key_id: str, *, grace_seconds: int | None = None, expires_in: int | None = None) -> Call[ApiKey]:
    body = _filters(grace_seconds=grace_seconds, expires_in=expires_in)
    return Call("POST", f"/v1/admin/keys/{key_id}/rotate", _key, json=body)


def revoke_key(key_id: str) -> Call[ApiKey]:
    return Call("POST", f"/v1/admin/keys/{key_id}/revoke", _key, idempotent=True)

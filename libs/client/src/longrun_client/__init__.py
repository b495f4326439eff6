"""Longrun's Python SDK: submit jobs, follow their progress live, manage dead letters, workflows and keys.

    from longrun_client import Client

    with Client("http://127.0.0.1:8000", "dev-key") as lr:
        job = lr.submit("demo.steps", {"steps": 20, "delay": 0.1})
        for event in lr.follow(job.id):
            print(event.seq, event.status, event.progress.percent)
"""

from .client import AsyncClient, Client
from .config import Config
from .errors import (
    ApiError,
    Conflict,
    ConnectionFailed,
    Forbidden,
    InvalidInput,
    LongrunError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    Unavailable,
)
from .models import TERMINAL, ApiKey, DeadLetter, Event, Job, Page, Progress, StoredFile, Stream, TaskInfo
from .retry import RetryPolicy

__all__ = [
    "TERMINAL", "ApiError", "ApiKey", "AsyncClient", "Client", "Config", "Conflict", "ConnectionFailed",
    "DeadLetter", "Event", "Forbidden", "InvalidInput", "Job", "LongrunError", "NotFound", "Page",
    "PayloadTooLarge", "Progress", "RateLimited", "RetryPolicy", "StoredFile", "Stream", "TaskInfo",
    "Unauthorized", "Unavailable",
]

"""The task-authoring API: `@task`, the registry, and the errors a task may raise."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from longrun_common.catalog import TaskPolicy, TaskSpec
from longrun_common.settings import QUEUE_NAME

# The errors live in errors.py (context.py and reporter.py raise them, and this module's types name JobContext);
# tasks import them from here.
from .errors import JobCancelled, JobDrained, JobFailed, JobFenced, PermanentError, TransientError

if TYPE_CHECKING:
    from .context import JobContext

__all__ = ["REGISTRY", "JobCancelled", "JobDrained", "JobFailed", "JobFenced", "PermanentError", "TaskDefinition",
           "TransientError", "task"]

ArgsT = TypeVar("ArgsT", bound=BaseModel)
TaskFn = Callable[["JobContext", Any], Any]


@dataclass(frozen=True)
class TaskDefinition:
    """A registered task: its function, typed args, policy, and optional cancel hook."""

    name: str
    fn: TaskFn
    args_model: type[BaseModel]
    policy: TaskPolicy
    description: str = ""
    on_cancel: Callable[[JobContext], None] | None = None
    retry_on: tuple[type[BaseException], ...] = field(default=())

    def spec(self) -> TaskSpec:
        """The catalog entry: JSON Schema of the args, and the policy."""
        return TaskSpec(
            name=self.name,
            description=self.description,
            args_schema=self.args_model.model_json_schema(),
            policy=self.policy,
        )


REGISTRY: dict[str, TaskDefinition] = {}


def task(
    name: str,
    *,
    args: type[ArgsT],
    retries: int = 0,
    backoff: float = 1.0,
    backoff_max: float = 600.0,
    jitter: bool = True,
    retry_on: tuple[type[BaseException], ...] = (),
    soft_time_limit: float | None = None,
    time_limit: float | None = None,
    max_time_limit: float = 24 * 3600.0,
    queue: str = "default",
    description: str | None = None,
    on_cancel: Callable[[JobContext], None] | None = None,
) -> Callable[[Callable[[JobContext, ArgsT], Any]], Callable[[JobContext, ArgsT], Any]]:
    """Declare a Longrun task. `retries` is how many times it may run again after a retryable failure;
    `retry_on` adds exception types that retry besides TransientError, timeouts and lost workers. `queue` is the
    task's default queue (published in the catalog's policy); a job may name another."""

    # Which queues exist is configuration (LONGRUN_QUEUES), read when a job is submitted, not at import:
    # the gateway refuses a job whose queue is not configured, naming the ones that are.
    if not QUEUE_NAME.fullmatch(queue):
        raise ValueError(f"task {name!r}: queue {queue!r}: use 1-64 letters, digits, '_', '-' or '.'")

    def register(fn: Callable[[JobContext, ArgsT], Any]) -> Callable[[JobContext, ArgsT], Any]:
        if name in REGISTRY and REGISTRY[name].fn is not fn:
            raise ValueError(f"task {name!r} is declared twice")
        default_policy = TaskPolicy()
        policy = TaskPolicy(
            max_attempts=retries + 1,
            backoff_base=backoff,
            backoff_max=backoff_max,
            backoff_jitter=jitter,
            retry_on=[*default_policy.retry_on, *(exc.__name__ for exc in retry_on)],
            soft_time_limit=soft_time_limit,
            time_limit=time_limit,
            max_time_limit=max_time_limit,
            queue=queue,
        )
        doc = description if description is not None else (fn.__doc__ or "").strip().splitlines()[0:1]
        REGISTRY[name] = TaskDefinition(
            name=name,
            fn=fn,
            args_model=args,
            policy=policy,
            description=doc if isinstance(doc, str) else "".join(doc),
            on_cancel=on_cancel,
            retry_on=retry_on,
        )
        return fn

    return register

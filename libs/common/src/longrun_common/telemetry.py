"""Telemetry for every Longrun process: tracing set-up from the standard OTEL_* variables, trace context in job
events, job fields on log lines, and metric label helpers.

Tracing is off unless asked for: `OTEL_TRACES_EXPORTER=otlp|console`, or an OTLP endpoint
(`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, OTLP over HTTP/protobuf). Everything else
is the SDK's own reading of the standard variables: `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SDK_DISABLED`.

Each entry point calls `setup_tracing()` once: the gateway and hub before building their app, a Celery prefork
child in `worker_process_init` (after the fork: the batch exporter's thread does not survive one) and
`shutdown_tracing()` when the child exits, since pool processes leave with `os._exit` and skip atexit.
When tracing is off, every helper here is a cheap no-op.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

# Why a job was retried, folded into a closed set: job error types are exception class names (unbounded).
RETRY_REASONS = ("transient", "timeout", "lost", "drained", "error")

_PROPAGATOR = TraceContextTextMapPropagator()
_state: dict[str, Any] = {}


def retry_reason(error_type: str) -> str:
    """The `reason` label of `longrun_job_retries_total` for a job error type."""
    if error_type in ("TransientError", "transient"):
        return "transient"
    if error_type in ("timeout", "lost", "drained"):
        return error_type
    return "error"


# --- set-up ------------------------------------------------------------------------------------------------

def exporter_name() -> str:
    """The trace exporter the environment asks for: `otlp`, `console` or `none` (the default)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "none"
    chosen = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if chosen:
        return chosen.split(",")[0].strip()
    if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return "otlp"
    return "none"


def enabled() -> bool:
    """Whether this process set up tracing (spans are recorded and exported)."""
    return bool(_state.get("provider"))


def setup_tracing(service_name: str, *, celery: bool = False, redis: bool = True, sqlalchemy: bool = True) -> bool:
    """Set up tracing for this process from the OTEL_* variables; returns whether it is on. Idempotent per
    process (a forked child sets up its own)."""
    if _state.get("pid") == os.getpid():
        return enabled()
    _state.clear()
    _state["pid"] = os.getpid()
    exporter = exporter_name()
    if exporter == "none":
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    span_exporter: SpanExporter
    if exporter == "console":
        span_exporter = ConsoleSpanExporter()
    else:
        if exporter != "otlp":
            log.warning("OTEL_TRACES_EXPORTER=%s is not supported here; using otlp", exporter)
        protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        if protocol != "http/protobuf":
            log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported here; using http/protobuf", protocol)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter()
    os.environ.setdefault("OTEL_SERVICE_NAME", service_name)
    provider = TracerProvider(resource=Resource.create(), shutdown_on_exit=True)
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    _state["provider"] = provider
    _state["tracer"] = provider.get_tracer("longrun")
    if redis:
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        RedisInstrumentor().instrument(tracer_provider=provider)
    if sqlalchemy:
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        # Its declared range stops below SQLAlchemy 2.1, which it traces all the same (engine events);
        # tests/test_tracing.py checks the SQL spans are there.
        SQLAlchemyInstrumentor().instrument(tracer_provider=provider, skip_dep_check=True)
    if celery:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    log.info("tracing on: %s exporter, service %s", exporter, os.environ["OTEL_SERVICE_NAME"])
    return True


def instrument_fastapi(app: Any) -> None:
    """Server spans for a FastAPI app, when tracing is on."""
    if enabled():
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app, tracer_provider=_state["provider"], exclude_spans=["receive", "send"])


def shutdown_tracing() -> None:
    """Export what is buffered and stop (a process about to exit without running atexit)."""
    provider = _state.get("provider")
    if provider is not None and _state.get("pid") == os.getpid():
        provider.shutdown()
        _state.pop("provider", None)


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """Behave as if tracing were off inside (benchmarks compare on and off in one process): no Longrun spans,
    and the Redis / SQLAlchemy instrumentations stand aside too."""
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    saved: dict[str, Any] = {key: _state.pop(key) for key in ("provider", "tracer") if key in _state}
    try:
        with suppress_instrumentation():
            yield
    finally:
        _state.update(saved)


def tracer() -> Tracer:
    tracer_: Tracer | None = _state.get("tracer")
    return tracer_ if tracer_ is not None else trace.get_tracer("longrun")


# --- spans and context ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def span(name: str, kind: SpanKind = SpanKind.INTERNAL, attributes: dict[str, Any] | None = None) -> Iterator[Any]:
    """A span when tracing is on; nothing otherwise."""
    if not enabled():
        yield None
        return
    with tracer().start_as_current_span(name, kind=kind, attributes=attributes) as current:
        yield current


def traceparent() -> str | None:
    """The W3C `traceparent` of the current span (for an event's payload), or None."""
    if not enabled():
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


@contextlib.contextmanager
def linked_span(name: str, parent_traceparent: str | None, kind: SpanKind = SpanKind.CONSUMER,
                attributes: dict[str, Any] | None = None) -> Iterator[Any]:
    """A new span that links to (does not nest under) the span of `parent_traceparent`: fan-out of one event
    to many clients, long after the publishing span ended."""
    if not enabled():
        yield None
        return
    links = []
    if parent_traceparent:
        linked = trace.get_current_span(_PROPAGATOR.extract({"traceparent": parent_traceparent})).get_span_context()
        if linked.is_valid:
            links.append(Link(linked))
    # A root of its own: the delivery must not become a child of whatever happens to be current.
    with tracer().start_as_current_span(name, context=otel_context.Context(), kind=kind, links=links,
                                        attributes=attributes) as current:
        yield current


def current_trace_id() -> str:
    """The current trace id as 32 hex digits, or '' outside a recorded span."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


# --- log lines of a job --------------------------------------------------------------------------------------

_job: ContextVar[tuple[str, int] | None] = ContextVar("longrun_job", default=None)


@contextlib.contextmanager
def job_context(job_id: str, attempt: int) -> Iterator[None]:
    """Log lines written inside carry the job's id, attempt and trace id (see `install_log_fields`)."""
    token = _job.set((job_id, attempt))
    try:
        yield
    finally:
        _job.reset(token)


def enter_job(job_id: str, attempt: int) -> Any:
    """`job_context` for code that cannot use a `with` block (Celery's prerun/postrun signals): returns the
    token to give to `leave_job`."""
    return _job.set((job_id, attempt))


def leave_job(token: Any) -> None:
    _job.reset(token)


def install_log_fields() -> None:
    """Give every log record `job_id`, `attempt`, `trace_id` and `longrun_job` (all three as ` job_id=…
    attempt=… trace_id=…`, or '' outside a job), for log formats to use. Idempotent."""
    current = logging.getLogRecordFactory()
    if getattr(current, "_longrun", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = current(*args, **kwargs)
        job = _job.get()
        trace_id = current_trace_id()
        record.job_id, record.attempt = job if job else ("", 0)
        record.trace_id = trace_id
        if job:
            record.longrun_job = f" job_id={job[0]} attempt={job[1]} trace_id={trace_id or '-'}"
        else:
            record.longrun_job = f" trace_id={trace_id}" if trace_id else ""
        return record

    factory._longrun = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)

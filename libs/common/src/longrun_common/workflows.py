"""Workflows: chains, groups and chords of jobs, advanced from SQL (the record), never from Redis.

Every node of a spec is a `jobs` row: leaves are ordinary jobs (kind "job"), chain/group/chord nodes are kind
"workflow" and never reach Celery. Rows carry `parent_id`, `root_id` and `position`; a node's `flow` says its
shape (`type`, the workflow's `on_failure`, its leaf count) and a chord's last child is its `then`.

- `waiting`: the step's dependencies have not finished (it stays `queued`, and is not sent).
- `settled`: this job's end has been applied to its parent. A child's end is applied by one conditional
  UPDATE (settled false -> true) in the same transaction as the parent's `pending` decrement and the release
  of its successor, which is the transaction that ends the child (`JobStore.finish_if`), so two finishers can
  never both release a step, and a crash leaves either all or none.
- The reconciler (`reconcile`) finishes what a crash interrupted: a child ended but not settled (a requeue
  racing the step's own end), a step
  released but not started, a node whose children all settled but which is not ended.

A step's inputs are the results of the steps it depends on, in order: the previous step of a chain gives
`[its result]`, a chord's members give the `then` their results; a group's or chain's result is the list of its
children's results / its last step's result. Progress roll-up is done by the publisher's script (rollup.py);
this module only seeds each node's sums.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

import redis
from celery import Celery
from sqlalchemy import Engine, Table, and_, func, insert, or_, select, update
from sqlalchemy.engine import Connection

from . import statements
from .events import JobError, Progress
from .keys import Keys
from .models import Job, utcnow
from .publisher import SEQ_GAP_AFTER_LOSS, EventSpec, Published, Publisher, sql_floor
from .rows import creation_fields, job_of, row_values, table_of
from .states import TERMINAL, JobStatus

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

log = logging.getLogger(__name__)

KIND_JOB, KIND_WORKFLOW = "job", "workflow"
WAITING_REASON = "waiting_for_dependencies"
ABORTED = "workflow_aborted"  # the error type of steps a workflow cancelled itself (fail_fast, a failed dependency)
FAIL_FAST, CONTINUE = "fail_fast", "continue"
TERMINAL_VALUES = tuple(s.value for s in TERMINAL)
_QUEUED, _RUNNING = JobStatus.QUEUED.value, JobStatus.RUNNING.value
SETTLE_GRACE_SECONDS = 5.0


class Store(Protocol):
    """What the engine uses of `jobs.JobStore` (which calls into this module)."""

    engine: Engine
    redis: redis.Redis[bytes]
    keys: Keys
    publisher: Publisher
    celery: Celery | None

    def get(self, job_id: str) -> Job | None: ...
    def announce_many(self, jobs: Sequence[Job]) -> list[Published | None]: ...
    def request_cancel(self, job_id: str) -> Job | None: ...
    def requeue(self, job_id: str) -> Job | None: ...  # calls reopen(revive_aborted=False) for an aborted step
    def finish_if(self, job_id: str, attempt: int, target: JobStatus, *, only_from: tuple[JobStatus, ...],
                  error: JobError | None = None, result: Any = None, progress: Progress | None = None,
                  dead_letter: bool = False, seq_floor: int = 0, published_seq: int = 0) -> bool: ...


def _jobs() -> Table:
    return table_of(Job)


def _row(values: Any) -> Job:
    return job_of(values)


def children(connection: Connection, node_id: str) -> list[Job]:
    jobs = _jobs()
    rows = connection.execute(select(jobs).where(jobs.c.parent_id == node_id).order_by(jobs.c.position))
    return [_row(r) for r in rows]


def initial_positions(node: Job, count: int) -> list[int]:
    """The children a node starts with: a chain's first, a group's all, a chord's members (not its then)."""
    shape = (node.flow or {}).get("type")
    if shape == "chain":
        return [0] if count else []
    if shape == "chord":
        return list(range(count - 1))
    return list(range(count))


def child_weight(child: Job) -> tuple[float, bool]:
    """A child's weight in its parent's roll-up, and whether it is fixed (else the child's `total` replaces it)."""
    flow = child.flow or {}
    if flow.get("weight") is not None:
        return float(flow["weight"]), True
    if child.kind == KIND_WORKFLOW:
        return float(flow.get("leaves", 1)), True
    return 1.0, False


# --- submit -----------------------------------------------------------------------------------------------------


def submit(store: Store, rows: Sequence[Job]) -> Job:
    """Insert every row of one workflow in one transaction, seed the roll-up sums, start the root.

    `rows` come parents first, the root first. Runnable leaves are announced (event and message); waiting
    steps and nodes get their `queued` event only, so every job of the tree has a live snapshot.
    """
    root = rows[0]
    with store.engine.begin() as connection:
        connection.execute(insert(_jobs()), [row_values(job) for job in rows])
    try:
        _seed(store, rows)
        store.publisher.publish_many(store.redis, [_status_event(job) for job in rows
                                                   if job.kind == KIND_WORKFLOW or job.waiting])
        start(store, root)
    except redis.RedisError:
        log.warning("workflow %s accepted but not yet started (Redis unavailable); the reconciler will", root.id)
    return store.get(root.id) or root


def _seed(store: Store, rows: Iterable[Job]) -> None:
    """Each node's roll-up hash: its children's weights (`w:`, `k:` when fixed) and the total `W`."""
    sums: dict[str, dict[str | bytes, Any]] = {}
    for job in rows:
        if job.kind == KIND_WORKFLOW:
            sums.setdefault(job.id, {"W": 0.0, "D": 0, "P": 0, "t0": 0})
        if job.parent_id:
            weight, fixed = child_weight(job)
            fields = sums.setdefault(job.parent_id, {"W": 0.0, "D": 0, "P": 0, "t0": 0})
            fields[f"w:{job.id}"] = weight
            if fixed:
                fields[f"k:{job.id}"] = 1
            fields["W"] += weight
    pipe = store.redis.pipeline(transaction=False)
    for node_id, fields in sums.items():
        pipe.hset(store.keys.rollup(node_id), mapping=fields)
    pipe.execute()


def _publish_status(store: Store, job: Job, *, reopen: bool = False) -> Published:
    return store.publisher.publish(store.redis, _status_event(job, reopen=reopen, seq_floor=seq_floor(store, job)))


def _status_event(job: Job, *, reopen: bool = False, seq_floor: int = 0) -> EventSpec:
    fields = creation_fields(job)
    fields["queued_reason"] = WAITING_REASON if job.waiting and job.status == _QUEUED else ""
    return EventSpec(job.id, "status", JobStatus(job.status), job.attempt, fields=fields,
                     allow_after_terminal=reopen, seq_floor=seq_floor)


def seq_floor(store: Store, job: Job) -> int:
    """Where a job's seq continues if Redis lost its hash (the publisher uses it only then).

    A leaf's own events trail SQL's seq by at most SEQ_GAP_AFTER_LOSS (`sql_floor`). A node publishes its status
    changes plus at most one roll-up event per event of any job below it, none of which SQL records; so the
    tree's SQL seqs plus a gap per row bound every node's seq. One aggregate query, per node status change only.
    """
    if job.kind != KIND_WORKFLOW:
        return sql_floor(job.seq)
    jobs, root_id = _jobs(), job.root_id or job.id
    with store.engine.connect() as connection:
        bound = connection.execute(
            select(func.coalesce(func.sum(jobs.c.seq), 0) + func.count() * SEQ_GAP_AFTER_LOSS)
            .where(or_(jobs.c.root_id == root_id, jobs.c.id == root_id))).scalar_one()
    return int(bound)


# --- starting steps -----------------------------------------------------------------------------------------------


def start(store: Store, node: Job) -> None:
    """Start a released step: a leaf is sent (the common dispatch path); a node runs and starts its first
    children, which inherit its inputs. Safe to repeat (the reconciler does)."""
    if node.waiting or node.status in TERMINAL_VALUES:
        return
    if node.kind != KIND_WORKFLOW:
        _start_all(store, [node])
        return
    jobs = _jobs()
    with store.engine.begin() as connection:
        began = connection.execute(update(jobs).where(jobs.c.id == node.id, jobs.c.status == _QUEUED)
                                   .values(status=_RUNNING, started_at=utcnow(), updated_at=utcnow())).rowcount
        count = len(connection.execute(select(jobs.c.id).where(jobs.c.parent_id == node.id)).all())
        initial = initial_positions(node, count)
        values: dict[str, Any] = {"waiting": False, "updated_at": utcnow()}
        if node.inputs is not None:
            values["inputs"] = node.inputs
        released = {r[0] for r in connection.execute(update(jobs).where(
            jobs.c.parent_id == node.id, jobs.c.position.in_(initial), jobs.c.waiting.is_(True),
            jobs.c.status == _QUEUED).values(**values).returning(jobs.c.id))}
        # Only steps this call started: on a repeat (the reconciler) the others were sent already, and a step
        # released but never sent is re-sent by the reconciler's own check of its `dispatched` mark.
        first = [c for c in children(connection, node.id) if c.status == _QUEUED and not c.waiting
                 and c.position in initial and (began or c.id in released)] if began or released else []
    if began:
        node.status = _RUNNING
        _publish_status(store, node)
    _start_all(store, first)


def _start_all(store: Store, steps: Sequence[Job]) -> None:
    """Start released steps: the leaves announced together (one batch: a group of 1,000 is three round trips,
    not 3,000), then each node (whose own first leaves go out in one batch too)."""
    leaves = [s for s in steps if s.kind != KIND_WORKFLOW and s.status == _QUEUED and not s.waiting]
    if leaves:
        store.announce_many(leaves)
    for step in steps:
        if step.kind == KIND_WORKFLOW:
            start(store, step)


# --- a child ended ------------------------------------------------------------------------------------------------


@dataclass
class Settlement:
    """A step's end applied to its parent in SQL (`settle`): what remains to do once that has committed."""

    child: Job
    parent: Job
    pending: int
    released: list[Job]


def child_ended(store: Store, child: Job) -> None:
    """Apply a step's end to its parent, once, in a transaction of its own (the reconciler's repair; a worker
    settles in the ending's own transaction: `JobStore.finish_if`)."""
    if child.parent_id is None or child.status not in TERMINAL_VALUES:
        return
    with store.engine.begin() as connection:
        settlement = settle(connection, child)
    if settlement is not None:
        after_settle(store, settlement)


def settle(connection: Connection, child: Job) -> Settlement | None:
    """Inside the caller's transaction: apply a step's end to its parent, once (None when it already was).

    O(1) statements per step (two, plus a release's): the settle, and the parent's decrement, which returns the
    parent's row. Run in the ending's own transaction, two finishers can never both release a step, and a crash
    leaves the step either running or ended and applied. `after_settle` does the rest once this has committed.
    """
    won = connection.execute(statements.settle(), {"p_id": child.id}).rowcount
    if not won:  # another finisher (or the reconciler) applied it, or a requeue's unsettle has yet to run
        return None
    parent = _row(connection.execute(statements.count_down(), {"p_id": child.parent_id}).one())
    pending = parent.pending or 0
    released = _release_after(connection, parent, child, pending) if parent.status == _RUNNING else []
    return Settlement(child, parent, pending, released)


def _release_after(connection: Connection, parent: Job, child: Job, pending: int) -> list[Job]:
    """Inside the settling transaction: mark the step(s) that `child`'s end makes runnable (waiting -> false)."""
    jobs = _jobs()
    shape = (parent.flow or {}).get("type")
    succeeded = child.status == JobStatus.SUCCEEDED.value
    target: tuple[int, list[Any]] | None = None
    if shape == "chain" and succeeded and child.position is not None:
        target = (child.position + 1, [child.result])
    elif shape == "chord" and pending == 1:  # every member settled: the `then` is all that is left
        members = [c for c in children(connection, parent.id) if not _is_then(c)]
        if all(m.status == JobStatus.SUCCEEDED.value for m in members):
            target = (len(members), [m.result for m in members])
    if target is None:
        return []
    position, inputs = target
    rows = connection.execute(update(jobs).where(
        jobs.c.parent_id == parent.id, jobs.c.position == position, jobs.c.waiting.is_(True),
        jobs.c.status == _QUEUED).values(waiting=False, inputs=inputs, updated_at=utcnow()).returning(jobs.c.id))
    ids = [r[0] for r in rows]
    return [_row(r) for r in connection.execute(select(jobs).where(jobs.c.id.in_(ids)))] if ids else []


def _is_then(job: Job) -> bool:
    return bool((job.flow or {}).get("then"))


def after_settle(store: Store, settlement: Settlement) -> None:
    """After a settle has committed: announce and send the released steps, end the parent, or apply the policy.
    A crash here is repaired by the reconciler (a released step not sent, a node whose children all settled)."""
    parent, child, pending, released = (settlement.parent, settlement.child, settlement.pending,
                                        settlement.released)
    for job in released:
        _publish_status(store, job)  # its snapshot drops `queued_reason`
    _start_all(store, released)
    if parent.status != _RUNNING:
        return
    failed = child.status != JobStatus.SUCCEEDED.value
    if failed and _culprit(child) and (parent.flow or {}).get("on_failure", FAIL_FAST) == FAIL_FAST:
        root = store.get(child.root_id or parent.id)
        if root is not None:
            abort(store, root, child)
        return
    if failed:
        _cancel_blocked(store, parent, child)
    if pending <= 0:
        finalize(store, parent)


def _culprit(child: Job) -> bool:
    """A step that failed (or was cancelled) by itself, not one its workflow cancelled."""
    return (child.error or {}).get("type") != ABORTED


def _cancel_blocked(store: Store, parent: Job, child: Job) -> None:
    """`continue`: steps that depended on a failed one can never run (a chain's later steps, a chord's then)."""
    with store.engine.connect() as connection:
        siblings = children(connection, parent.id)
    shape = (parent.flow or {}).get("type")
    blocked = [s for s in siblings if s.waiting and s.status == _QUEUED and (
        (shape == "chain" and (s.position or 0) > (child.position or 0)) or (shape == "chord" and _is_then(s)))]
    for job in blocked:
        cancel_tree(store, job, JobError(type=ABORTED, message=f"step {child.id} it depends on did not succeed"))


def finalize(store: Store, node: Job) -> None:
    """Every child settled: the node succeeds with its result, or fails naming each child that did not."""
    with store.engine.connect() as connection:
        kids = children(connection, node.id)
    if any(k.status not in TERMINAL_VALUES for k in kids):
        return
    bad = [k for k in kids if k.status != JobStatus.SUCCEEDED.value]
    if not bad:
        shape = (node.flow or {}).get("type")
        result = [k.result for k in kids] if shape == "group" else (kids[-1].result if kids else None)
        store.finish_if(node.id, node.attempt, JobStatus.SUCCEEDED, only_from=(JobStatus.RUNNING,), result=result,
                        progress=Progress(percent=100.0), seq_floor=seq_floor(store, node))
        return
    named = [k for k in bad if _culprit(k)] or bad
    error = JobError(type="workflow_failed", message=f"{len(named)} step(s) did not succeed: " + "; ".join(
        f"{k.id} ({k.task}) {k.status}: {(k.error or {}).get('message', '')}" for k in named))
    store.finish_if(node.id, node.attempt, JobStatus.FAILED, only_from=(JobStatus.RUNNING,), error=error,
                    seq_floor=seq_floor(store, node))


# --- failure and cancel --------------------------------------------------------------------------------------------


def abort(store: Store, root: Job, culprit: Job) -> None:
    """`fail_fast`: the workflow and every node between it and the failed step fail, naming the step; every other
    step still pending is cancelled.

    The nodes fail from the root down: each one's parent has already ended when its own end is applied to it, so
    no node's end sets the policy off again.
    """
    message = f"step {culprit.id} ({culprit.task}) {culprit.status}: {(culprit.error or {}).get('message', '')}"
    failed = [root, *_ancestors_below(store, culprit, root.id)]
    for node in failed:
        store.finish_if(node.id, node.attempt, JobStatus.FAILED, only_from=(JobStatus.RUNNING, JobStatus.QUEUED),
                        error=JobError(type="workflow_failed", message=message), seq_floor=seq_floor(store, node))
    aborted = JobError(type=ABORTED, message=f"workflow failed fast: {message}")
    for node in failed:
        _cancel_descendants(store, node.id, aborted)


def _ancestors_below(store: Store, step: Job, root_id: str) -> list[Job]:
    """The nodes between `root_id` and `step` (both excluded), the outermost first."""
    chain: list[Job] = []
    parent_id = step.parent_id
    while parent_id is not None and parent_id != root_id:
        node = store.get(parent_id)
        if node is None:
            break
        chain.append(node)
        parent_id = node.parent_id
    return chain[::-1]


def cancel(store: Store, node: Job) -> Job | None:
    """Cancel a workflow node and, first, every non-terminal step below it."""
    error = JobError(type="cancelled", message="cancelled by request")
    store.finish_if(node.id, node.attempt, JobStatus.CANCELLED, only_from=(JobStatus.RUNNING, JobStatus.QUEUED),
                    error=error, seq_floor=seq_floor(store, node))
    _cancel_descendants(store, node.id, JobError(type=ABORTED, message=f"workflow node {node.id} was cancelled"))
    return store.get(node.id)


def cancel_tree(store: Store, job: Job, error: JobError) -> None:
    if job.kind == KIND_WORKFLOW:
        store.finish_if(job.id, job.attempt, JobStatus.CANCELLED, only_from=(JobStatus.RUNNING, JobStatus.QUEUED),
                        error=error, seq_floor=seq_floor(store, job))
        _cancel_descendants(store, job.id, error)
    elif job.waiting or job.status == _QUEUED:
        store.finish_if(job.id, job.attempt, JobStatus.CANCELLED, only_from=(JobStatus.QUEUED, JobStatus.RETRYING),
                        error=error)
    if job.kind != KIND_WORKFLOW and not job.waiting:
        store.request_cancel(job.id)  # a running step stops at its next report (or by force after the grace)


def _cancel_descendants(store: Store, node_id: str, error: JobError) -> None:
    with store.engine.connect() as connection:
        kids = children(connection, node_id)
    for kid in kids:
        if kid.status not in TERMINAL_VALUES:
            cancel_tree(store, kid, error)


# --- requeue -------------------------------------------------------------------------------------------------------


def reopen(store: Store, job: Job, *, revive_aborted: bool = True) -> None:
    """A failed step was requeued: its ended ancestors run again, and (`revive_aborted`) the steps the workflow
    cancelled because of the failure come back (sent again if they had been released, else waiting again)."""
    _unsettle(store, job)
    root_id = job.root_id
    if root_id is None or not revive_aborted:
        return
    jobs = _jobs()
    with store.engine.connect() as connection:
        aborted = [_row(r) for r in connection.execute(select(jobs).where(
            jobs.c.root_id == root_id, jobs.c.status == JobStatus.CANCELLED.value)) if _is_aborted(_row(r))]
    for step in sorted(aborted, key=lambda j: j.kind != KIND_WORKFLOW):  # nodes first, then their steps
        if step.kind == KIND_WORKFLOW or (step.started_at is None and step.waiting):
            _revive(store, step)
        else:
            store.requeue(step.id)


def _is_aborted(job: Job) -> bool:
    return (job.error or {}).get("type") == ABORTED


def _unsettle(store: Store, job: Job) -> None:
    """Undo `job`'s settlement in its parent (pending + 1), reopening the parent too if it had ended."""
    jobs = _jobs()
    parent: Job | None = None
    with store.engine.begin() as connection:
        won = connection.execute(update(jobs).where(jobs.c.id == job.id, jobs.c.settled.is_(True))
                                 .values(settled=False)).rowcount
        if won and job.parent_id:
            connection.execute(update(jobs).where(jobs.c.id == job.parent_id).values(pending=jobs.c.pending + 1))
            parent = _row(connection.execute(select(jobs).where(jobs.c.id == job.parent_id)).one())
    if parent is not None and parent.status in TERMINAL_VALUES:
        _revive(store, parent)


def _revive(store: Store, node: Job) -> None:
    """An ended node runs again (a never-started step waits again); its own parent is reopened first."""
    jobs = _jobs()
    started = node.kind == KIND_WORKFLOW and node.started_at is not None
    status = _RUNNING if started else _QUEUED
    with store.engine.begin() as connection:
        revived = connection.execute(update(jobs).where(jobs.c.id == node.id, jobs.c.status.in_(TERMINAL_VALUES))
                                     .values(status=status, error=None, result=None, finished_at=None,
                                             cancel_requested_at=None, updated_at=utcnow(),
                                             waiting=node.waiting and not started)).rowcount
    if not revived:
        return
    _unsettle(store, node)
    fresh = store.get(node.id)
    if fresh is not None:
        store.redis.hdel(store.keys.job(node.id), "cancel", "error", "result", "finished_at")
        _publish_status(store, fresh, reopen=True)


# --- repair --------------------------------------------------------------------------------------------------------


def reconcile(store: Store, limit: int = 200) -> None:
    """Finish what a crash interrupted (see the module docstring). Each repair is safe to repeat."""
    jobs = _jobs()
    # A step's own process applies its end right after recording it: leave it that moment.
    ended_before = utcnow() - timedelta(seconds=SETTLE_GRACE_SECONDS)
    with store.engine.connect() as connection:
        unsettled = [_row(r) for r in connection.execute(select(jobs).where(
            jobs.c.parent_id.is_not(None), jobs.c.settled.is_(False), jobs.c.status.in_(TERMINAL_VALUES),
            jobs.c.finished_at < ended_before).limit(limit))]
        nodes = [_row(r) for r in connection.execute(select(jobs).where(
            jobs.c.kind == KIND_WORKFLOW, jobs.c.waiting.is_(False), jobs.c.status.in_((_QUEUED, _RUNNING)))
            .limit(limit))]
    for child in unsettled:
        log.warning("workflow step %s ended (%s) but was not applied to its parent; applying it", child.id,
                    child.status)
        child_ended(store, child)
    for node in nodes:
        _repair_node(store, node)


def _repair_node(store: Store, node: Job) -> None:
    if not store.redis.hexists(store.keys.job(node.id), "tenant"):
        log.warning("workflow node %s lost from Redis; republishing it and its roll-up", node.id)
        _reseed(store, node)
        _publish_status(store, node)
    start(store, node)  # a released node not started, or one whose first children were not released
    fresh = store.get(node.id)
    if fresh is not None and fresh.status == _RUNNING and (fresh.pending or 0) <= 0:
        finalize(store, fresh)


def _reseed(store: Store, node: Job) -> None:
    """Rebuild a node's roll-up sums from SQL after Redis lost them (the one O(children) step, on repair only)."""
    with store.engine.connect() as connection:
        kids = children(connection, node.id)
    _seed(store, [node, *kids])
    done = 0.0
    fields: dict[str | bytes, Any] = {}
    for kid in kids:
        weight, _ = child_weight(kid)
        fraction = 1.0 if kid.status == JobStatus.SUCCEEDED.value else float(
            (kid.progress or {}).get("percent") or 0) / 100
        fields[f"f:{kid.id}"], fields[f"s:{kid.id}"] = fraction, kid.status
        done += weight * fraction
    fields["D"] = done
    store.redis.hset(store.keys.rollup(node.id), mapping=fields)


def descendants_of(connection: Connection, node_id: str) -> Iterable[Job]:
    """Every row below a node (breadth first)."""
    frontier = [node_id]
    while frontier:
        jobs = _jobs()
        rows = [_row(r) for r in connection.execute(select(jobs).where(and_(jobs.c.parent_id.in_(frontier))))]
        yield from rows
        frontier = [r.id for r in rows if r.kind == KIND_WORKFLOW]

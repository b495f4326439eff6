"""A job's end in one transaction (JobStore.finish_if): the job, its attempt, SQL's seq and, for a workflow step,
the end's application to its parent (workflows.settle), on SQLite and PostgreSQL.

Two members of a chord that end at the same moment must release its `then` exactly once; the seq SQL records
(the attempt's last published one, not the ending's own) must still put a republished ending after every event
a client has seen; the rows built without validation (rows.job_of) must equal validated ones.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import insert, select, update

from longrun_common import workflows
from longrun_common.jobs import JobStore
from longrun_common.models import Job
from longrun_common.publisher import EventSpec
from longrun_common.rows import job_of, row_values, table_of
from longrun_common.states import JobStatus
from tests.support.jobs import new_job, submit

pytestmark = pytest.mark.integration

RUNNING = (JobStatus.RUNNING,)


def chord_of_two(store: JobStore) -> tuple[Job, list[Job], Job]:
    """A chord of two `demo.steps` members then `demo.collect`, submitted as the gateway does."""
    root = Job(tenant="dev", task="workflow.chord", kind=workflows.KIND_WORKFLOW, args={}, queue="workflow",
               flow={"type": "chord", "on_failure": workflows.FAIL_FAST, "leaves": 3}, pending=3)
    members = [new_job("demo.steps", {"steps": 1}, parent_id=root.id, root_id=root.id, position=i) for i in (0, 1)]
    then = new_job("demo.collect", {}, parent_id=root.id, root_id=root.id, position=2, waiting=True,
                   flow={"then": True})
    workflows.submit(store, [root, *members, then])
    return root, members, then


def test_two_members_ending_at_once_release_the_then_exactly_once(
    job_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    released: list[str] = []
    original = workflows.after_settle

    def observed(store: workflows.Store, settlement: workflows.Settlement) -> None:
        released.extend(job.id for job in settlement.released)
        original(store, settlement)

    monkeypatch.setattr(workflows, "after_settle", observed)
    for _ in range(5):  # a race: several rounds, each with both ends released by one barrier
        released.clear()
        root, members, then = chord_of_two(job_store)
        for member in members:
            assert job_store.begin_attempt(member.id, 1, "w@test") is not None
        barrier = threading.Barrier(len(members))
        ended: list[bool] = []

        def end(member: Job, barrier: threading.Barrier, ended: list[bool]) -> None:
            barrier.wait()
            ended.append(job_store.finish_if(member.id, 1, JobStatus.SUCCEEDED, only_from=RUNNING,
                                             result={"n": member.position}, published_seq=2))

        threads = [threading.Thread(target=end, args=(member, barrier, ended)) for member in members]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert ended == [True, True]
        assert released == [then.id]
        parent, step = job_store.get(root.id), job_store.get(then.id)
        assert parent is not None and parent.pending == 1  # the then alone is left
        assert step is not None and not step.waiting and step.inputs == [{"n": 0}, {"n": 1}]
        assert all((job := job_store.get(m.id)) is not None and job.settled for m in members)


def test_the_seq_recorded_with_the_end_puts_a_republished_ending_after_every_seen_event(
    job_store: JobStore,
) -> None:
    job = submit(job_store, "demo.steps", {"steps": 1})
    assert job_store.begin_attempt(job.id, 1, "w@test") is not None
    running = job_store.publisher.publish(job_store.redis, EventSpec(job.id, "status", JobStatus.RUNNING, 1))
    assert job_store.finish_if(job.id, 1, JobStatus.SUCCEEDED, only_from=RUNNING, result={"ok": True},
                               published_seq=running.seq)
    ended = job_store.get(job.id)
    assert ended is not None and ended.seq == running.seq  # written in the ending's transaction
    last_seen = int(job_store.redis.hget(job_store.keys.job(job.id), "seq") or 0)
    assert last_seen == running.seq + 1  # the ending itself

    job_store.redis.delete(job_store.keys.job(job.id), job_store.keys.stream(job.id))  # Redis lost the job
    republished = job_store.publish_ending(ended)
    assert republished.seq > last_seen


def test_an_older_published_seq_never_lowers_the_recorded_one(job_store: JobStore) -> None:
    job = submit(job_store, "demo.steps", {"steps": 1})
    assert job_store.begin_attempt(job.id, 1, "w@test") is not None
    jobs = table_of(Job)
    with job_store.engine.begin() as connection:  # a progress write recorded a newer seq meanwhile
        connection.execute(update(jobs).where(jobs.c.id == job.id).values(seq=40))
    assert job_store.finish_if(job.id, 1, JobStatus.FAILED, only_from=RUNNING, published_seq=7)
    ended = job_store.get(job.id)
    assert ended is not None and ended.seq == 40 and ended.status == JobStatus.FAILED.value


def test_a_row_built_without_validation_equals_a_validated_one(job_store: JobStore) -> None:
    job = new_job("demo.steps", {"steps": 3}, progress={"percent": 5.0, "message": "m"}, flow={"weight": 2.0},
                  inputs=[{"a": 1}], waiting=True, priority=4)
    jobs = table_of(Job)
    with job_store.engine.begin() as connection:
        connection.execute(insert(jobs), [row_values(job)])
        row = connection.execute(select(jobs).where(jobs.c.id == job.id)).one()
    built, validated = job_of(row), Job.model_validate(dict(row._mapping))
    dumped: dict[str, Any] = built.model_dump()
    assert dumped == validated.model_dump()
    assert built.progress == {"percent": 5.0, "message": "m"} and built.waiting is True and built.priority == 4

"""The KEDA trigger's query, rendered by the chart, run on a real migrated PostgreSQL jobs table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlmodel import Session

from longrun_common.db import create_db_engine
from longrun_common.models import Job
from longrun_common.settings import Settings

from .helm import by_kind, render_base

pytestmark = pytest.mark.integration


def test_trigger_query_counts_pods_needed_on_postgresql(postgres_url: str) -> None:
    """The rendered query, run on a migrated database: ceil((queued + running + retrying) / concurrency) over
    the set's queues only; finished jobs and other queues do not count."""
    manifests = render_base(set_json={"workers.sets": [
        {"name": "bulk", "queues": ["default", "low"], "concurrency": 3}]})
    query = by_kind(manifests, "ScaledObject")[0]["spec"]["triggers"][0]["metadata"]["query"]
    engine = create_db_engine(Settings(database_url=postgres_url))
    try:
        with Session(engine) as session:
            session.execute(text("TRUNCATE jobs CASCADE"))
            session.commit()
            assert session.execute(text(query)).scalar_one() == 0
            rows = ([("default", "queued")] * 4 + [("low", "running")] * 2 + [("low", "retrying")]
                    + [("high", "queued")] * 9 + [("default", "succeeded")] * 5 + [("default", "failed")])
            session.add_all(Job(tenant="t", task="demo", queue=q, status=s) for q, s in rows)
            session.commit()
            assert session.execute(text(query)).scalar_one() == 3  # ceil(7 / 3)
            session.add(Job(tenant="t", task="demo", queue="low", status="queued"))
            session.commit()
            assert session.execute(text(query)).scalar_one() == 3  # ceil(8 / 3)
            session.add_all([Job(tenant="t", task="demo", queue="low", status="queued") for _ in range(2)])
            session.commit()
            assert session.execute(text(query)).scalar_one() == 4  # ceil(10 / 3)
            # Jobs the fair scheduler holds back are `queued` in SQL, so they count; a delayed job counts once due.
            later, past = datetime.now(UTC) + timedelta(hours=1), datetime.now(UTC) - timedelta(seconds=1)
            session.add_all([Job(tenant="t", task="demo", queue="low", status="queued", run_at=later)] * 1
                            + [Job(tenant="t", task="demo", queue="low", status="queued", run_at=past)] * 1)
            session.commit()
            assert session.execute(text(query)).scalar_one() == 4  # ceil(11 / 3): the delayed job is not counted
            session.add_all([Job(tenant="t", task="demo", queue="default", status="queued") for _ in range(2)])
            session.commit()
            assert session.execute(text(query)).scalar_one() == 5  # ceil(13 / 3)
            session.execute(text("TRUNCATE jobs CASCADE"))
            session.commit()
    finally:
        engine.dispose()

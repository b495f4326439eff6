"""Publishing the task catalog to SQL, where the gateway reads it (it never imports worker code)."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlmodel import Session

from longrun_common.models import TaskRecord, utcnow

from .api import REGISTRY


def register_catalog(engine: Engine) -> list[str]:
    """Upsert every registered task's declaration; returns the task names."""
    with Session(engine) as session:
        for definition in REGISTRY.values():
            spec = definition.spec()
            record = session.get(TaskRecord, spec.name) or TaskRecord(name=spec.name)
            record.description = spec.description
            record.args_schema = spec.args_schema
            record.policy = spec.policy.model_dump(mode="json")
            record.updated_at = utcnow()
            session.add(record)
        session.commit()
    return sorted(REGISTRY)

"""delayed jobs: jobs.run_at, the time a delayed job is released

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 05:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('run_at', sa.DateTime(timezone=True), nullable=True))
        batch.create_index('ix_jobs_run_at', ['run_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_index('ix_jobs_run_at')
        batch.drop_column('run_at')

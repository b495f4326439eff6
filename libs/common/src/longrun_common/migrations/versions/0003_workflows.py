"""workflows: parent/root links, dependency state and node shape on jobs

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 05:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False,
                                      server_default='job'))
        batch_op.add_column(sa.Column('parent_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True))
        batch_op.add_column(sa.Column('root_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True))
        batch_op.add_column(sa.Column('position', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('waiting', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('settled', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('pending', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('inputs', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('flow', sa.JSON(), nullable=True))
        batch_op.create_index(batch_op.f('ix_jobs_parent_id'), ['parent_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_root_id'), ['root_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_jobs_root_id'))
        batch_op.drop_index(batch_op.f('ix_jobs_parent_id'))
        for column in ('flow', 'inputs', 'pending', 'settled', 'waiting', 'position', 'root_id', 'parent_id',
                       'kind'):
            batch_op.drop_column(column)

"""task graphs: when a dependent task became ready to plan, and the planner's index of those waiting

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

READY = sa.text("state = 'pending' AND ready_at IS NOT NULL")


def upgrade() -> None:
    op.add_column("scheduler_tasks", sa.Column("ready_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_tasks_ready", "scheduler_tasks", ["ready_at"], postgresql_where=READY, sqlite_where=READY)


def downgrade() -> None:
    op.drop_index("ix_tasks_ready", "scheduler_tasks")
    op.drop_column("scheduler_tasks", "ready_at")

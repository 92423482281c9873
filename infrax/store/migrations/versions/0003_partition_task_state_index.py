"""index partitions by task and state

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scheduler_partitions", schema=None) as batch_op:
        batch_op.create_index("ix_partitions_task_state", ["task_id", "state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("scheduler_partitions", schema=None) as batch_op:
        batch_op.drop_index("ix_partitions_task_state")

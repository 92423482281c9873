"""two indexes of scheduler_partitions that no query needs: ix_partitions_queue (the claim and a page
have their own since 0008) and the one on task_id alone (ix_partitions_task_state leads with it).
Every changed partition updated them: a cancel of a thousand wrote 2,000 index entries for nothing.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_partitions_queue", "scheduler_partitions")
    op.drop_index("ix_scheduler_partitions_task_id", "scheduler_partitions")


def downgrade() -> None:
    op.create_index("ix_scheduler_partitions_task_id", "scheduler_partitions", ["task_id"])
    op.create_index("ix_partitions_queue", "scheduler_partitions", ["state", "container_type", "priority", "seq"])

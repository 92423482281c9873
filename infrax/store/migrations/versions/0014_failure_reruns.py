"""automatic re-runs of a failed partition's failing tests, and what failed then passed

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Each an O(1) change of the table on SQLite and PostgreSQL, however many partitions it holds.
    op.add_column("scheduler_partitions", sa.Column("failure_reruns", sa.Integer, nullable=False, server_default="0"))
    op.add_column("scheduler_partitions", sa.Column("rerun_tests", sa.JSON, nullable=True))
    op.add_column("scheduler_partitions", sa.Column("avoid_container", sa.String(100), nullable=True))
    op.add_column("scheduler_partitions", sa.Column("intermittent", sa.JSON, nullable=True))


def downgrade() -> None:
    for column in ("intermittent", "avoid_container", "rerun_tests", "failure_reruns"):
        op.drop_column("scheduler_partitions", column)

"""results per test: each test case a run reported in JUnit XML

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "executioner_test_results",
        sa.Column("run_id", sa.String(100), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("partition_id", sa.String(64), nullable=False),
        sa.Column("run", sa.Integer, nullable=False),
        sa.Column("task_id", sa.String(64), nullable=False),
        sa.Column("task_name", sa.String(200), nullable=False),
        sa.Column("job_id", sa.String(64)),
        sa.Column("project", sa.String(200), nullable=False),
        sa.Column("test_id", sa.String(1000), nullable=False),
        sa.Column("file", sa.String(1000)),
        sa.Column("outcome", sa.String(10), nullable=False),
        sa.Column("duration", sa.Float, nullable=False),
        sa.Column("message", sa.Text),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_executioner_test_results_partition_id", "executioner_test_results", ["partition_id"])
    op.create_index("ix_executioner_test_results_task_id", "executioner_test_results", ["task_id"])
    op.create_index("ix_executioner_test_results_job_id", "executioner_test_results", ["job_id"])
    op.create_index("ix_test_results_test", "executioner_test_results", ["project", "test_id", "recorded_at"])


def downgrade() -> None:
    op.drop_table("executioner_test_results")

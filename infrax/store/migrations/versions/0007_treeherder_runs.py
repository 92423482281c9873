"""Taskcluster-shaped tasks and runs the job master reports to Treeherder; outbox CC routes

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

OUTBOXES = ("scheduler_outbox", "executioner_outbox", "jobmaster_outbox")


def upgrade() -> None:
    for name in OUTBOXES:
        op.add_column(name, sa.Column("cc", sa.Text(), nullable=True))
    op.create_table(
        "jobmaster_tc_tasks",
        sa.Column("partition_id", sa.String(64), primary_key=True),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("task_id", sa.String(64), nullable=False),
        sa.Column("task_name", sa.String(200), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("container_type", sa.String(100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_jobmaster_tc_tasks_job_id", "jobmaster_tc_tasks", ["job_id"])
    op.create_table(
        "jobmaster_tc_runs",
        sa.Column("partition_id", sa.String(64), primary_key=True),
        sa.Column("run", sa.Integer(), primary_key=True),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("reason_created", sa.String(30), nullable=False),
        sa.Column("reason_resolved", sa.String(30), nullable=True),
        sa.Column("worker_id", sa.String(100), nullable=True),
        sa.Column("log_url", sa.Text(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("scheduled", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("jobmaster_tc_runs")
    op.drop_index("ix_jobmaster_tc_tasks_job_id", "jobmaster_tc_tasks")
    op.drop_table("jobmaster_tc_tasks")
    for name in OUTBOXES:
        op.drop_column(name, "cc")

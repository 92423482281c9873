"""transactional outboxes, scheduler heartbeats, commit statuses to post

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

OUTBOXES = ("scheduler_outbox", "executioner_outbox", "jobmaster_outbox")


def upgrade() -> None:
    for name in OUTBOXES:
        op.create_table(
            name,
            sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
            sa.Column("exchange", sa.String(100), nullable=False),
            sa.Column("routing_key", sa.Text(), nullable=False),
            sa.Column("body", sa.Text(), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        )
    op.create_table(
        "scheduler_instances",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "jobmaster_commit_statuses",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("repository", sa.String(300), primary_key=True),
        sa.Column("sha", sa.String(100), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text()),
    )


def downgrade() -> None:
    op.drop_table("jobmaster_commit_statuses")
    op.drop_table("scheduler_instances")
    for name in OUTBOXES:
        op.drop_table(name)

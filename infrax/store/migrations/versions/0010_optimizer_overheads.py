"""the optimizer's learned per-partition overhead of a task on a container type: checkout and start

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "optimizer_overheads",
        sa.Column("project", sa.String(200), primary_key=True),
        sa.Column("task_name", sa.String(200), primary_key=True),
        sa.Column("container_type", sa.String(100), primary_key=True),
        sa.Column("checkout", sa.Float, nullable=False),
        sa.Column("checkout_samples", sa.Integer, nullable=False),
        sa.Column("start", sa.Float, nullable=False),
        sa.Column("start_samples", sa.Integer, nullable=False),
        sa.Column("recent_runs", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("optimizer_overheads")

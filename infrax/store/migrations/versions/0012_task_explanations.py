"""the optimizer's explanation of how each task was planned, kept for the dashboard's job page

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("scheduler_tasks", sa.Column("explanation", sa.JSON, nullable=True))


def downgrade() -> None:
    op.drop_column("scheduler_tasks", "explanation")

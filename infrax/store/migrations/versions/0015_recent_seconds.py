"""a file's last samples, whose median is its estimate: robust to runs on a loaded machine

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("optimizer_file_durations", sa.Column("recent_seconds", sa.JSON, nullable=True))


def downgrade() -> None:
    op.drop_column("optimizer_file_durations", "recent_seconds")

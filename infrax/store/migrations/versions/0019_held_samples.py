"""a file's outlying sample, held until the next run agrees

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("optimizer_file_durations") as batch_op:
        batch_op.add_column(sa.Column("held_seconds", sa.JSON()))


def downgrade() -> None:
    with op.batch_alter_table("optimizer_file_durations") as batch_op:
        batch_op.drop_column("held_seconds")

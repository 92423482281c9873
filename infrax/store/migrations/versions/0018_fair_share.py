"""fair share between projects: each partition's project and fair key, the claim in key order,
each project's place in each type's queue and each type's virtual time

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

CLAIMABLE = sa.text("state = 'queued' AND claimed_by IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("scheduler_partitions") as batch_op:
        batch_op.add_column(sa.Column("project", sa.String(200)))
        batch_op.add_column(sa.Column("fair_key", sa.Float(), nullable=False, server_default="0"))
    # What is queued already keeps its order: its priority, then its sequence.
    op.execute(
        "UPDATE scheduler_partitions SET fair_key = -priority, project = "
        "(SELECT project FROM scheduler_requests r WHERE r.id = scheduler_partitions.request_id)"
    )
    op.drop_index("ix_partitions_claimable", "scheduler_partitions")
    op.create_index(
        "ix_partitions_claimable",
        "scheduler_partitions",
        ["container_type", "fair_key", "seq"],
        postgresql_where=CLAIMABLE,
        sqlite_where=CLAIMABLE,
    )
    op.create_table(
        "scheduler_fair_shares",
        sa.Column("container_type", sa.String(100), primary_key=True),
        sa.Column("project", sa.String(200), primary_key=True),
        sa.Column("finish", sa.Float(), nullable=False),
    )
    op.create_table(
        "scheduler_fair_clocks",
        sa.Column("container_type", sa.String(100), primary_key=True),
        sa.Column("virtual_time", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("scheduler_fair_clocks")
    op.drop_table("scheduler_fair_shares")
    op.drop_index("ix_partitions_claimable", "scheduler_partitions")
    op.create_index(
        "ix_partitions_claimable",
        "scheduler_partitions",
        ["container_type", sa.text("priority DESC"), "seq"],
        postgresql_where=CLAIMABLE,
        sqlite_where=CLAIMABLE,
    )
    with op.batch_alter_table("scheduler_partitions") as batch_op:
        batch_op.drop_column("fair_key")
        batch_op.drop_column("project")

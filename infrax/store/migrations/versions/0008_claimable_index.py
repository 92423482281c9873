"""indexes for a big backlog: the claim's (claimable partitions of a type in claim order), a page's
(a state in queue order) and the heartbeat's (the claims held)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

CLAIMABLE = sa.text("state = 'queued' AND claimed_by IS NULL")
CLAIMED = sa.text("claimed_by IS NOT NULL")


def upgrade() -> None:
    op.create_index(
        "ix_partitions_claimable",
        "scheduler_partitions",
        ["container_type", sa.text("priority DESC"), "seq"],
        postgresql_where=CLAIMABLE,
        sqlite_where=CLAIMABLE,
    )
    op.create_index("ix_partitions_state_seq", "scheduler_partitions", ["state", "seq"])
    op.create_index(
        "ix_partitions_claimed", "scheduler_partitions", ["claimed_by"], postgresql_where=CLAIMED, sqlite_where=CLAIMED
    )


def downgrade() -> None:
    op.drop_index("ix_partitions_claimed", "scheduler_partitions")
    op.drop_index("ix_partitions_state_seq", "scheduler_partitions")
    op.drop_index("ix_partitions_claimable", "scheduler_partitions")

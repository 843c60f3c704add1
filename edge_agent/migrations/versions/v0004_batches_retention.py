"""Normal verdicts mirrored in batches, and indexes for the retention pass.

``verdicts.batch_id`` is the outbox row of the batch a normal verdict went into (NULL: not batched yet); a
batch row belongs to many verdicts, so ``outbox.verdict_id`` becomes nullable.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UNBATCHED = sa.text("batch_id IS NULL AND anomalous = false")


def upgrade() -> None:
    """Add ``verdicts.batch_id`` with a partial index of the unbatched rows; ``outbox.verdict_id`` nullable."""
    with op.batch_alter_table("verdicts") as batch:
        batch.add_column(sa.Column("batch_id", sa.Integer(), nullable=True))
    op.create_index(
        "ix_verdicts_unbatched",
        "verdicts",
        ["camera", "id"],
        sqlite_where=UNBATCHED,
        postgresql_where=UNBATCHED,
    )
    with op.batch_alter_table("outbox") as batch:
        batch.alter_column("verdict_id", existing_type=sa.Integer(), nullable=True)
    op.create_index("ix_outbox_finished", "outbox", ["status", "created_at"])


def downgrade() -> None:
    """Drop the indexes and ``batch_id``; batch rows of the outbox (no verdict) are deleted first."""
    op.drop_index("ix_outbox_finished", "outbox")
    op.execute("DELETE FROM outbox WHERE verdict_id IS NULL")
    with op.batch_alter_table("outbox") as batch:
        batch.alter_column("verdict_id", existing_type=sa.Integer(), nullable=False)
    op.drop_index("ix_verdicts_unbatched", "verdicts")
    with op.batch_alter_table("verdicts") as batch:
        batch.drop_column("batch_id")

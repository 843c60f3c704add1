"""Index serving the delivery worker's query: pending rows of one channel in id order.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``ix_outbox_pending`` (channel, status, next_attempt_at, id)."""
    op.create_index("ix_outbox_pending", "outbox", ["channel", "status", "next_attempt_at", "id"])


def downgrade() -> None:
    """Drop ``ix_outbox_pending``."""
    op.drop_index("ix_outbox_pending", table_name="outbox")

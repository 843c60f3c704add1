"""Initial schema: verdicts and the delivery outbox.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``verdicts`` and ``outbox``."""
    op.create_table(
        "verdicts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("camera", sa.String(64), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("frame_id", sa.String(512), nullable=False),
        sa.Column("captured_at", sa.DateTime(), nullable=False),
        sa.Column("processed_at", sa.DateTime(), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("model_hash", sa.String(128), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("normalised_score", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("anomalous", sa.Boolean(), nullable=False),
        sa.Column("defect_type", sa.String(128), nullable=True),
        sa.Column("type_confidence", sa.Float(), nullable=True),
        sa.Column("heatmap_path", sa.Text(), nullable=True),
        sa.Column("image_path", sa.Text(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.UniqueConstraint("camera", "frame_id", name="uq_verdicts_camera_frame"),
    )
    op.create_index("ix_verdicts_processed_at", "verdicts", ["processed_at"])
    op.create_index("ix_verdicts_camera", "verdicts", ["camera"])
    op.create_index("ix_verdicts_anomalous", "verdicts", ["anomalous"])
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("verdict_id", sa.Integer(), sa.ForeignKey("verdicts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("channel", sa.String(8), nullable=False),
        sa.Column("key", sa.String(1024), nullable=False),
        sa.Column("topic", sa.String(512), nullable=True),
        sa.Column("payload", sa.Text(), nullable=True),
        sa.Column("file_path", sa.Text(), nullable=True),
        sa.Column("content_type", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("delivered_at", sa.DateTime(), nullable=True),
        sa.UniqueConstraint("channel", "key", name="uq_outbox_channel_key"),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'dead')", name="ck_outbox_status"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_outbox_verdict_id", "outbox", ["verdict_id"])


def downgrade() -> None:
    """Drop both tables."""
    op.drop_table("outbox")
    op.drop_table("verdicts")

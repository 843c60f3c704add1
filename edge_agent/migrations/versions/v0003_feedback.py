"""Review feedback: one row per submission by a person (history kept; the latest row of a verdict wins).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``feedback`` with its label checks and the (verdict_id, id) index for "latest per verdict"."""
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("verdict_id", sa.Integer(), sa.ForeignKey("verdicts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("label", sa.String(16), nullable=False),
        sa.Column("defect_type", sa.String(128), nullable=True),
        sa.Column("reviewer", sa.String(64), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("label IN ('defect', 'false_alarm', 'unsure')", name="ck_feedback_label"),
        sa.CheckConstraint("defect_type IS NULL OR label = 'defect'", name="ck_feedback_type"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_feedback_verdict_id", "feedback", ["verdict_id", "id"])


def downgrade() -> None:
    """Drop ``feedback``."""
    op.drop_table("feedback")

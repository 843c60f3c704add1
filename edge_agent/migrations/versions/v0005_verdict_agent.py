"""Verdicts name the agent that scored them, so one review database holds a fleet.

``verdicts.agent`` (empty for rows written before this revision; an agent adopts them at start) and the unique
key ``(camera, frame_id, agent)`` in place of ``(camera, frame_id)``: two lines may both have a camera ``cam1``
(its prefix still serves an agent's per-frame lookup).
On SQLite the table is rebuilt; the runner switches foreign keys off around it (``migrations.upgrade``), or
dropping the old table would cascade into ``outbox`` and ``feedback``.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UNBATCHED = sa.text("batch_id IS NULL AND anomalous = false")


def upgrade() -> None:
    """Add ``verdicts.agent`` and make ``(camera, frame_id, agent)`` the unique key."""
    op.drop_index("ix_verdicts_unbatched", "verdicts")  # partial: recreated explicitly, not through reflection
    with op.batch_alter_table("verdicts") as batch:
        batch.add_column(sa.Column("agent", sa.String(64), nullable=False, server_default=""))
        batch.drop_constraint("uq_verdicts_camera_frame", type_="unique")
        batch.create_unique_constraint("uq_verdicts_camera_frame_agent", ["camera", "frame_id", "agent"])
    op.create_index(
        "ix_verdicts_unbatched", "verdicts", ["camera", "id"], sqlite_where=UNBATCHED, postgresql_where=UNBATCHED
    )
    op.create_index("ix_verdicts_agent", "verdicts", ["agent"])


def downgrade() -> None:
    """Back to ``(camera, frame_id)``; fails if two agents' rows share a camera and frame id."""
    op.drop_index("ix_verdicts_agent", "verdicts")
    op.drop_index("ix_verdicts_unbatched", "verdicts")
    with op.batch_alter_table("verdicts") as batch:
        batch.drop_constraint("uq_verdicts_camera_frame_agent", type_="unique")
        batch.create_unique_constraint("uq_verdicts_camera_frame", ["camera", "frame_id"])
        batch.drop_column("agent")
    op.create_index(
        "ix_verdicts_unbatched", "verdicts", ["camera", "id"], sqlite_where=UNBATCHED, postgresql_where=UNBATCHED
    )

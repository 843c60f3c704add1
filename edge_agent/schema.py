"""The verdict store's tables (SQLAlchemy 2 declarative), created by the Alembic migrations in ``migrations``.

Every timestamp is UTC (:class:`UTCDateTime`).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Normal verdicts not yet in an S3 batch (the partial index's condition; queries use the same text).
UNBATCHED = text("batch_id IS NULL AND anomalous = false")


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC as a naive timestamp on every backend; returns timezone-aware UTC (naive input = UTC)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Aware datetime -> naive UTC."""
        if value is None or value.tzinfo is None:
            return value
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Naive UTC -> aware UTC."""
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    """Declarative base of the store's tables."""


class Verdict(Base):
    """One scored frame (the fields of ``VerdictRecord``)."""

    __tablename__ = "verdicts"
    __table_args__ = (
        UniqueConstraint("camera", "frame_id", "agent", name="uq_verdicts_camera_frame_agent"),
        Index("ix_verdicts_processed_at", "processed_at"),
        Index("ix_verdicts_camera", "camera"),
        Index("ix_verdicts_anomalous", "anomalous"),
        Index("ix_verdicts_agent", "agent"),
        Index("ix_verdicts_unbatched", "camera", "id", sqlite_where=UNBATCHED, postgresql_where=UNBATCHED),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    agent: Mapped[str] = mapped_column(String(64), server_default="")  # "" only for rows from before revision 0005
    camera: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))
    frame_id: Mapped[str] = mapped_column(String(512))
    captured_at: Mapped[datetime] = mapped_column(UTCDateTime())
    processed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    model_hash: Mapped[str] = mapped_column(String(128))
    score: Mapped[float] = mapped_column(Float)
    normalised_score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    anomalous: Mapped[bool] = mapped_column(Boolean)
    defect_type: Mapped[str | None] = mapped_column(String(128))
    type_confidence: Mapped[float | None] = mapped_column(Float)
    heatmap_path: Mapped[str | None] = mapped_column(Text)
    image_path: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[float] = mapped_column(Float)
    batch_id: Mapped[int | None] = mapped_column(Integer)  # outbox row of the S3 batch holding this normal verdict


class Outbox(Base):
    """One unit of delivery; ``id`` is the delivery order within a channel."""

    __tablename__ = "outbox"
    __table_args__ = (
        UniqueConstraint("channel", "key", name="uq_outbox_channel_key"),
        CheckConstraint("status IN ('pending', 'delivered', 'dead')", name="ck_outbox_status"),
        Index("ix_outbox_verdict_id", "verdict_id"),
        Index("ix_outbox_pending", "channel", "status", "next_attempt_at", "id"),
        Index("ix_outbox_finished", "status", "created_at"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    verdict_id: Mapped[int | None] = mapped_column(ForeignKey("verdicts.id", ondelete="CASCADE"))  # None: a batch
    channel: Mapped[str] = mapped_column(String(8))
    key: Mapped[str] = mapped_column(String(1024))
    topic: Mapped[str | None] = mapped_column(String(512))
    payload: Mapped[str | None] = mapped_column(Text)
    file_path: Mapped[str | None] = mapped_column(Text)
    content_type: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Feedback(Base):
    """One review of a verdict (written by the review page only); one row per submission, the latest id wins."""

    __tablename__ = "feedback"
    __table_args__ = (
        CheckConstraint("label IN ('defect', 'false_alarm', 'unsure')", name="ck_feedback_label"),
        CheckConstraint("defect_type IS NULL OR label = 'defect'", name="ck_feedback_type"),
        Index("ix_feedback_verdict_id", "verdict_id", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    verdict_id: Mapped[int] = mapped_column(ForeignKey("verdicts.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(16))
    defect_type: Mapped[str | None] = mapped_column(String(128))
    reviewer: Mapped[str] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

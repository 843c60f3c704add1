"""Verdict store and delivery outbox (SQLAlchemy 2; SQLite on the edge, any SQLAlchemy URL centrally).

A verdict and its outbox rows are written in one transaction; the delivery worker reads the outbox in id
order per channel. The schema comes from the Alembic migrations in ``edge_agent.migrations``.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
    case,
    create_engine,
    event,
    func,
    make_url,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool

from edge_agent import migrations
from edge_agent.records import Channel, OutboxMessage, VerdictRecord

log = logging.getLogger(__name__)

CHANNELS: tuple[Channel, ...] = ("mqtt", "s3")
#: Normal verdicts not yet in an S3 batch (the partial index's condition; queries use the same text).
UNBATCHED = text("batch_id IS NULL AND anomalous = false")
Clock = Callable[[], datetime]


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
        UniqueConstraint("camera", "frame_id", name="uq_verdicts_camera_frame"),
        Index("ix_verdicts_processed_at", "processed_at"),
        Index("ix_verdicts_camera", "camera"),
        Index("ix_verdicts_anomalous", "anomalous"),
        Index("ix_verdicts_unbatched", "camera", "id", sqlite_where=UNBATCHED, postgresql_where=UNBATCHED),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
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


@dataclass(frozen=True)
class OutboxItem:
    """Detached copy of one pending outbox row, handed to the delivery worker."""

    id: int
    verdict_id: int | None
    channel: str
    key: str
    topic: str | None
    payload: str | None
    file_path: str | None
    content_type: str
    attempts: int
    next_attempt_at: datetime
    created_at: datetime


_ITEM_FIELDS = [f.name for f in fields(OutboxItem)]
_VERDICT_FIELDS = [f.name for f in fields(VerdictRecord)]


def _now() -> datetime:
    return datetime.now(UTC)


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL; None for other backends and in-memory databases."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    if parsed.query.get("uri") or parsed.database.startswith("file:"):
        return None
    return Path(parsed.database)


class Store:
    """Verdicts and outbox behind one engine; one session per call, safe for a writer and a delivery thread."""

    def __init__(self, url: str, busy_timeout_ms: int = 5000, clock: Clock | None = None) -> None:
        self.url = url
        self.now: Clock = clock or _now  # injected by tests that run a simulated month
        self.path = sqlite_path(url)
        self.is_sqlite = make_url(url).get_backend_name() == "sqlite"
        existed = self.path is not None and self.path.exists() and self.path.stat().st_size > 0
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {}
        if self.is_sqlite and self.path is None:
            kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
        self.engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            _install_sqlite_pragmas(self.engine, busy_timeout_ms)
            if self.path is not None:
                _incremental_vacuum_mode(self.engine, self.path, existed)
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = sessionmaker(self.engine.execution_options(linewatch_write=True), expire_on_commit=False)
        migrations.migrate_to_head(self.engine.execution_options(linewatch_write=True), self.path if existed else None)

    def record(self, verdict: VerdictRecord, messages: list[OutboxMessage]) -> tuple[int, bool]:
        """Write a verdict and its outbox rows in one transaction; (existing id, False) if the frame is known."""
        now = self.now()
        try:
            with self._writer.begin() as session:
                existing = self._verdict_id(session, verdict.camera, verdict.frame_id)
                if existing is not None:
                    return existing, False
                row = Verdict(**{name: getattr(verdict, name) for name in _VERDICT_FIELDS})
                session.add(row)
                session.flush()
                for msg in messages:
                    session.add(
                        Outbox(
                            verdict_id=row.id,
                            channel=msg.channel,
                            key=msg.key,
                            topic=msg.topic,
                            payload=msg.payload,
                            file_path=msg.file_path,
                            content_type=msg.content_type,
                            status="pending",
                            attempts=0,
                            next_attempt_at=now,
                            created_at=now,
                        )
                    )
                return row.id, True
        except IntegrityError:
            with self._reader() as session:  # a concurrent writer stored the same frame first
                existing = self._verdict_id(session, verdict.camera, verdict.frame_id)
            if existing is None:
                raise
            return existing, False

    @staticmethod
    def _verdict_id(session: Session, camera: str, frame_id: str) -> int | None:
        stmt = select(Verdict.id).where(Verdict.camera == camera, Verdict.frame_id == frame_id)
        return session.scalar(stmt)

    def has_verdict(self, camera: str, frame_id: str) -> bool:
        """True when this camera's frame already has a verdict."""
        with self._reader() as session:
            return self._verdict_id(session, camera, frame_id) is not None

    def pending(self, channel: str, limit: int, now: datetime | None = None) -> list[OutboxItem]:
        """Due pending rows of a channel, oldest id first, stopping before a row still waiting for its retry.

        A row in back-off holds back every later row of its channel, so delivery stays in strict order.
        """
        now = now or self.now()
        waiting = (
            select(func.min(Outbox.id))
            .where(Outbox.channel == channel, Outbox.status == "pending", Outbox.next_attempt_at > now)
            .scalar_subquery()
        )
        stmt = (
            select(Outbox)
            .where(Outbox.channel == channel, Outbox.status == "pending", Outbox.next_attempt_at <= now)
            .where((waiting.is_(None)) | (Outbox.id < waiting))
            .order_by(Outbox.id)
            .limit(limit)
        )
        with self._reader() as session:
            rows = session.scalars(stmt).all()
            return [OutboxItem(**{name: getattr(row, name) for name in _ITEM_FIELDS}) for row in rows]

    def mark_delivered(self, item_id: int) -> None:
        """Mark an outbox row delivered."""
        self._update(item_id, status="delivered", delivered_at=self.now(), last_error=None)

    def mark_failed(self, item_id: int, error: str, retry_at: datetime) -> None:
        """Count a failed attempt and schedule the next one at ``retry_at``."""
        self._update(item_id, attempts=Outbox.attempts + 1, last_error=error[:2000], next_attempt_at=retry_at)

    def mark_dead(self, item_id: int, error: str) -> None:
        """Give up on a row that can never be delivered (e.g. its file is gone); it no longer blocks its channel."""
        self._update(item_id, status="dead", attempts=Outbox.attempts + 1, last_error=error[:2000])

    def _update(self, item_id: int, **values: Any) -> None:
        with self._writer.begin() as session:
            session.execute(update(Outbox).where(Outbox.id == item_id).values(**values))

    def batch_normals(self, camera: str, render: Callable[[list[VerdictRecord]], tuple[str, str]], limit: int) -> int:
        """Put up to ``limit`` unbatched normal verdicts of ``camera`` into one S3 outbox row; return how many.

        ``render(records)`` gives the row's key and payload. Row and ``batch_id`` marks are one transaction, so
        every normal verdict lands in exactly one batch.
        """
        stmt = select(Verdict).where(Verdict.camera == camera, UNBATCHED).order_by(Verdict.id).limit(limit)
        with self._writer.begin() as session:
            rows = session.scalars(stmt).all()
            if not rows:
                return 0
            key, payload = render([VerdictRecord(**{n: getattr(r, n) for n in _VERDICT_FIELDS}) for r in rows])
            now = self.now()
            batch = Outbox(
                verdict_id=None,
                channel="s3",
                key=key,
                topic=None,
                payload=payload,
                file_path=None,
                content_type="application/x-ndjson",
                status="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
            session.add(batch)
            session.flush()
            ids = [r.id for r in rows]
            session.execute(update(Verdict).where(Verdict.id.in_(ids)).values(batch_id=batch.id))
            return len(rows)

    def queue_stats(self) -> dict[str, tuple[int, float]]:
        """Pending rows and the age in seconds of the oldest one, per channel (every channel listed)."""
        stmt = (
            select(Outbox.channel, func.count(), func.min(Outbox.created_at))
            .where(Outbox.status == "pending")
            .group_by(Outbox.channel)
        )
        now = self.now()
        with self._reader() as session:
            found = {
                channel: (int(n), max(0.0, (now - oldest).total_seconds()))
                for channel, n, oldest in session.execute(stmt)
            }
        return {channel: found.get(channel, (0, 0.0)) for channel in (*CHANNELS, *found)}

    def queue_depths(self) -> dict[str, int]:
        """Pending outbox rows per channel (every channel listed, zero when empty)."""
        stmt = select(Outbox.channel, func.count()).where(Outbox.status == "pending").group_by(Outbox.channel)
        with self._reader() as session:
            found = {channel: int(n) for channel, n in session.execute(stmt)}
        return {channel: found.get(channel, 0) for channel in (*CHANNELS, *found)}

    def counts(self, since: datetime | None = None) -> dict[str, dict[str, int]]:
        """Frames and anomalies per camera, processed at or after ``since``: ``{camera: {frames, anomalies}}``."""
        anomalies = func.sum(case((Verdict.anomalous.is_(True), 1), else_=0))
        stmt = select(Verdict.camera, func.count(), anomalies).group_by(Verdict.camera)
        if since is not None:
            stmt = stmt.where(Verdict.processed_at >= since)
        with self._reader() as session:
            return {cam: {"frames": int(n), "anomalies": int(a or 0)} for cam, n, a in session.execute(stmt)}

    def integrity_ok(self) -> bool:
        """``PRAGMA integrity_check`` on SQLite (False when corrupt); True on other backends."""
        if not self.is_sqlite:
            return True
        try:
            with self.engine.connect() as conn:
                rows = [r[0] for r in conn.execute(text("PRAGMA integrity_check"))]
        except DBAPIError as err:
            log.error("integrity check failed: %s", err)
            return False
        if rows != ["ok"]:
            log.error("integrity check found problems: %s", "; ".join(map(str, rows[:10])))
        return rows == ["ok"]

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()


def _incremental_vacuum_mode(engine: Any, path: Path, existed: bool) -> None:
    """``auto_vacuum = INCREMENTAL`` so that retention can give deleted pages back without stopping writers.

    Switching needs a VACUUM (instant on a new file; once, logged, on an older one). A damaged file is left as it
    is: the integrity check reports it.
    """
    raw = engine.raw_connection()  # outside SQLAlchemy's transaction: VACUUM cannot run inside one
    try:
        conn: Any = raw.driver_connection
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
            return
        if existed:
            log.info("database %s: one-time VACUUM to switch on incremental vacuum (retention)", path)
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("VACUUM")
    except sqlite3.DatabaseError as err:
        log.error("database %s: incremental vacuum not switched on: %s", path, err)
    finally:
        raw.close()


def _install_sqlite_pragmas(engine: Any, busy_timeout_ms: int) -> None:
    """Explicit pragmas on every connection; writes take the lock up front (``BEGIN IMMEDIATE``)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        dbapi_conn.isolation_level = None  # the "begin" hook below emits BEGIN itself
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")  # PRAGMA takes no bound parameters
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A read-then-write in a deferred transaction can fail with SQLITE_BUSY without waiting.
        immediate = conn.get_execution_options().get("linewatch_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

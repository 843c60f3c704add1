"""Read access to the agent's verdicts and the one write the review page makes: feedback rows.

The database is opened through the agent's ``Store``, so an older database is backed up and migrated to the
newest revision (which adds ``feedback``) first. Every query is a SQLAlchemy 2 ``select()``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from sqlalchemy import ColumnElement, Select, and_, false, func, or_, select
from sqlalchemy.orm import aliased, sessionmaker

from edge_agent.records import VerdictRecord
from edge_agent.store import Feedback, Store, Verdict
from review.auth import User

log = logging.getLogger(__name__)

LABELS: tuple[str, ...] = ("defect", "false_alarm", "unsure")
NO_TYPE = "(none)"
DEFECT_TYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_VERDICT_COLUMNS = [c.key for c in Verdict.__table__.columns]


class FeedbackRefusedError(PermissionError):
    """The user may not write feedback (viewer role), or the feedback is invalid."""


@dataclass(frozen=True)
class QueueFilter:
    """What the review queue shows; empty tuples mean "any"."""

    cameras: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    defect_types: tuple[str, ...] = ()  # predicted or confirmed; NO_TYPE matches verdicts without a type
    score_min: float = 0.0  # normalised score (threshold = 0.5)
    score_max: float = 1.0
    reviewed: bool | None = None  # None: both
    anomalous_only: bool = True
    agents: tuple[str, ...] = ()  # the agents (lines) of a fleet


@dataclass(frozen=True, kw_only=True)
class ReviewRow(VerdictRecord):
    """A verdict (the agent's record and its row id) with its latest feedback (None when nobody reviewed it)."""

    id: int
    label: str | None = None
    confirmed_type: str | None = None
    reviewer: str | None = None
    reviewed_at: datetime | None = None
    note: str | None = None


@dataclass(frozen=True)
class FeedbackEntry:
    """One submitted review."""

    id: int
    verdict_id: int
    label: str
    defect_type: str | None
    reviewer: str
    note: str | None
    created_at: datetime


def validate_feedback(label: str, defect_type: str | None) -> str | None:
    """The defect type to store for ``label``; FeedbackRefusedError when the label or type is invalid."""
    if label not in LABELS:
        raise FeedbackRefusedError(f"label must be one of {', '.join(LABELS)}")
    if label != "defect":
        return None
    defect_type = (defect_type or "").strip()
    if not DEFECT_TYPE_RE.match(defect_type):
        msg = "a confirmed defect needs its type: letters, digits, '_' or '-', at most 64 characters"
        raise FeedbackRefusedError(msg)
    return defect_type


class ReviewStore:
    """Verdict queries and feedback writes over one engine (the agent's database or the S3 sync copy)."""

    def __init__(self, url: str, busy_timeout_ms: int = 5000) -> None:
        self.store = Store(url, busy_timeout_ms)  # migrates to head (backing up an existing SQLite file first)
        self.engine = self.store.engine
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self.engine.execution_options(linewatch_write=True), expire_on_commit=False)

    def close(self) -> None:
        """Release the engine's connections."""
        self.store.close()

    # --- queries -----------------------------------------------------------------------------------------

    def cameras(self, agents: tuple[str, ...] = ()) -> list[str]:
        """Every camera with at least one verdict (of ``agents`` when given)."""
        stmt = select(Verdict.camera).distinct().order_by(Verdict.camera)
        return self._scalars(stmt.where(Verdict.agent.in_(agents)) if agents else stmt)

    def agents(self) -> list[str]:
        """Every agent with at least one verdict ("" for rows from before verdicts named their agent)."""
        return self._scalars(select(Verdict.agent).distinct().order_by(Verdict.agent))

    def models_in_use(self) -> pd.DataFrame:
        """Per agent and camera: the model of its latest verdict, since when that version scores, its verdict count."""
        stmt = select(
            Verdict.agent,
            Verdict.camera,
            Verdict.model_name,
            Verdict.model_version,
            Verdict.model_hash,
            func.min(Verdict.processed_at),
            func.max(Verdict.processed_at),
            func.count(),
        ).group_by(Verdict.agent, Verdict.camera, Verdict.model_name, Verdict.model_version, Verdict.model_hash)
        with self._read() as session:
            rows = session.execute(stmt).all()
        columns = ["agent", "camera", "model", "version", "hash", "first verdict", "latest verdict", "verdicts"]
        runs = pd.DataFrame(rows, columns=columns)
        if runs.empty:
            return runs
        latest = runs.sort_values("latest verdict").groupby(["agent", "camera"]).tail(1)
        return latest.sort_values(["agent", "camera"]).reset_index(drop=True)

    def defect_types(self) -> list[str]:
        """Defect types predicted by the agent or confirmed by reviewers, sorted."""
        predicted = self._scalars(select(Verdict.defect_type).where(Verdict.defect_type.is_not(None)).distinct())
        confirmed = self._scalars(select(Feedback.defect_type).where(Feedback.defect_type.is_not(None)).distinct())
        return sorted(set(predicted) | set(confirmed))

    def _scalars(self, stmt: Select[Any]) -> list[Any]:
        with self._read() as session:
            return list(session.scalars(stmt))

    def _rows_stmt(self, flt: QueueFilter) -> Select[Any]:
        stmt, latest = with_latest_feedback(lambda latest: select(Verdict, latest))
        conditions: list[ColumnElement[bool]] = [
            Verdict.normalised_score >= flt.score_min,
            Verdict.normalised_score <= flt.score_max,
        ]
        if flt.anomalous_only:
            conditions.append(Verdict.anomalous.is_(True))
        if flt.cameras:
            conditions.append(Verdict.camera.in_(flt.cameras))
        if flt.agents:
            conditions.append(Verdict.agent.in_(flt.agents))
        if flt.since is not None:
            conditions.append(Verdict.processed_at >= flt.since)
        if flt.until is not None:
            conditions.append(Verdict.processed_at < flt.until)
        if flt.reviewed is not None:
            conditions.append(latest.id.is_not(None) if flt.reviewed else latest.id.is_(None))
        if flt.defect_types:
            named = [t for t in flt.defect_types if t != NO_TYPE]
            options: list[ColumnElement[bool]] = [Verdict.defect_type.in_(named), latest.defect_type.in_(named)]
            if NO_TYPE in flt.defect_types:
                options.append(and_(Verdict.defect_type.is_(None), latest.defect_type.is_(None)))
            conditions.append(or_(false(), *options))
        return stmt.where(*conditions)

    def queue(self, flt: QueueFilter, limit: int = 50, offset: int = 0) -> list[ReviewRow]:
        """Matching verdicts with their latest feedback, newest first."""
        stmt = self._rows_stmt(flt).order_by(Verdict.processed_at.desc(), Verdict.id.desc())
        with self._read() as session:
            return [_row(v, fb) for v, fb in session.execute(stmt.limit(limit).offset(offset))]

    def count(self, flt: QueueFilter) -> int:
        """How many verdicts match ``flt``."""
        stmt = select(func.count()).select_from(self._rows_stmt(flt).subquery())
        with self._read() as session:
            return int(session.scalar(stmt) or 0)

    def verdict(self, verdict_id: int) -> ReviewRow | None:
        """One verdict with its latest feedback."""
        stmt, _ = with_latest_feedback(lambda latest: select(Verdict, latest))
        stmt = stmt.where(Verdict.id == verdict_id)
        with self._read() as session:
            found = session.execute(stmt).first()
        return None if found is None else _row(found[0], found[1])

    def history(self, verdict_id: int) -> list[FeedbackEntry]:
        """Every feedback row of a verdict, oldest first."""
        stmt = select(Feedback).where(Feedback.verdict_id == verdict_id).order_by(Feedback.id)
        with self._read() as session:
            return [_entry(fb) for fb in session.scalars(stmt)]

    def reviewed(self, labels: tuple[str, ...] = LABELS) -> list[ReviewRow]:
        """Verdicts whose latest feedback has one of ``labels``, oldest review first (exports, examples)."""
        stmt, latest = with_latest_feedback(lambda latest: select(Verdict, latest), reviewed_only=True)
        stmt = stmt.where(latest.label.in_(labels)).order_by(latest.id)
        with self._read() as session:
            return [_row(v, fb) for v, fb in session.execute(stmt)]

    def frame(
        self,
        since: datetime | None = None,
        cameras: tuple[str, ...] = (),
        limit: int = 200_000,
        agents: tuple[str, ...] = (),
    ) -> pd.DataFrame:
        """Verdicts as a DataFrame (newest ``limit``), with the latest feedback label per verdict, for statistics."""
        cols = [
            Verdict.id,
            Verdict.agent,
            Verdict.camera,
            Verdict.frame_id,
            Verdict.processed_at,
            Verdict.model_name,
            Verdict.model_version,
            Verdict.model_hash,
            Verdict.score,
            Verdict.normalised_score,
            Verdict.threshold,
            Verdict.anomalous,
            Verdict.defect_type,
        ]
        stmt, _ = with_latest_feedback(
            lambda latest: select(*cols, latest.label.label("label"), latest.defect_type.label("confirmed_type"))
        )
        if since is not None:
            stmt = stmt.where(Verdict.processed_at >= since)
        if cameras:
            stmt = stmt.where(Verdict.camera.in_(cameras))
        if agents:
            stmt = stmt.where(Verdict.agent.in_(agents))
        stmt = stmt.order_by(Verdict.processed_at.desc()).limit(limit)
        with self._read() as session:
            result = session.execute(stmt)
            df = pd.DataFrame([tuple(r) for r in result], columns=list(result.keys()))
        df["processed_at"] = pd.to_datetime(df["processed_at"], utc=True)
        df["anomalous"] = df["anomalous"].astype(bool)
        return df

    # --- the one write ------------------------------------------------------------------------------------

    def add_feedback(
        self, user: User, verdict_id: int, label: str, defect_type: str | None = None, note: str | None = None
    ) -> FeedbackEntry:
        """Store one review by ``user``; FeedbackRefusedError for viewers, unknown verdicts and invalid labels."""
        if not user.can_write:
            log.warning("feedback refused: %s has the %s role", user.name, user.role)
            raise FeedbackRefusedError(f"{user.name} is a {user.role}: read-only")
        defect_type = validate_feedback(label, defect_type)
        note = (note or "").strip()[:2000] or None
        with self._write.begin() as session:
            if session.get(Verdict, verdict_id) is None:
                raise FeedbackRefusedError(f"verdict {verdict_id} does not exist")
            row = Feedback(
                verdict_id=verdict_id,
                label=label,
                defect_type=defect_type,
                reviewer=user.name,
                note=note,
                created_at=datetime.now(UTC),
            )
            session.add(row)
            session.flush()
            entry = _entry(row)
        log.info("feedback %d on verdict %d by %s: %s %s", entry.id, verdict_id, user.name, label, defect_type or "")
        return entry


def with_latest_feedback(columns: Callable[[Any], Select[Any]], reviewed_only: bool = False) -> tuple[Select[Any], Any]:
    """``columns(latest)`` joined to each verdict's newest feedback row (``latest``, an alias of Feedback).

    An outer join (unreviewed verdicts have ``latest`` None) unless ``reviewed_only``; returns (statement, latest).
    """
    newest = (
        select(Feedback.verdict_id.label("verdict_id"), func.max(Feedback.id).label("feedback_id"))
        .group_by(Feedback.verdict_id)
        .subquery("newest")
    )
    latest = aliased(Feedback, name="latest")
    stmt = columns(latest)
    if reviewed_only:
        stmt = stmt.join(newest, newest.c.verdict_id == Verdict.id).join(latest, latest.id == newest.c.feedback_id)
    else:
        stmt = stmt.outerjoin(newest, newest.c.verdict_id == Verdict.id)
        stmt = stmt.outerjoin(latest, latest.id == newest.c.feedback_id)
    return stmt, latest


def _entry(fb: Feedback) -> FeedbackEntry:
    return FeedbackEntry(fb.id, fb.verdict_id, fb.label, fb.defect_type, fb.reviewer, fb.note, fb.created_at)


_ROW_FIELDS = {f.name for f in fields(ReviewRow)}


def _row(verdict: Verdict, fb: Feedback | None) -> ReviewRow:
    values = {name: getattr(verdict, name) for name in _VERDICT_COLUMNS if name in _ROW_FIELDS}
    if fb is not None:
        values.update(
            label=fb.label, confirmed_type=fb.defect_type, reviewer=fb.reviewer, reviewed_at=fb.created_at, note=fb.note
        )
    return ReviewRow(**values)

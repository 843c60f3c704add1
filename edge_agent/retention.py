"""Retention: oldest-first deletion of evidence files, verdict rows and delivered outbox rows.

One pass (:meth:`Retention.run_once`) runs on the housekeeper thread, never on a scoring thread, and writes in
short transactions, so scoring goes on meanwhile. What is never deleted: an outbox row not yet delivered, a
file such a row still points to, a normal verdict not yet in an S3 batch, and a verdict a person reviewed
(with its heatmap and image copy). SQLite gives the freed pages back with ``incremental_vacuum`` in small
steps, then truncates its write-ahead log.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Select, delete, exists, or_, select

from edge_agent.config import RetentionConfig
from edge_agent.store import Feedback, Outbox, Store, Verdict

log = logging.getLogger(__name__)

_DAY = timedelta(days=1)
VACUUM_PAGES = 256  # pages given back per step (1 MiB at 4 KiB pages): each step is a short write


@dataclass
class RetentionReport:
    """What one pass did and what it left."""

    files_deleted: int = 0
    bytes_freed: int = 0
    verdicts_deleted: int = 0
    outbox_deleted: int = 0
    files_bytes: int = 0  # evidence on disk after the pass
    protected_bytes: int = 0  # of which undeletable (undelivered or reviewed)
    over_quota: bool = False  # protected files alone exceed the quota
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True, order=True)
class _File:
    mtime: float
    size: int
    path: str


class Retention:
    """Applies ``cfg`` to the evidence folders ``roots`` and to ``store``; ``keep_unbatched`` when batching S3."""

    def __init__(self, cfg: RetentionConfig, store: Store, roots: list[Path], keep_unbatched: bool) -> None:
        self.cfg, self.store = cfg, store
        self.roots = [r for i, r in enumerate(roots) if r not in roots[:i]]
        self.keep_unbatched = keep_unbatched
        self.passes = 0

    def run_once(self) -> RetentionReport:
        """One pass: database rows first (they may release files), then files, then space reclaim."""
        report = RetentionReport()
        started = time.perf_counter()
        now = self.store.now()
        if self.cfg.outbox_max_age_days is not None:
            before = now - self.cfg.outbox_max_age_days * _DAY
            report.outbox_deleted = self._delete_chunks(_finished_outbox(before), Outbox)
        if self.cfg.verdicts_max_age_days is not None:
            before = now - self.cfg.verdicts_max_age_days * _DAY
            report.verdicts_deleted = self._delete_chunks(self._old_verdicts(before), Verdict)
        self._prune_files(now.timestamp(), report)
        if report.outbox_deleted or report.verdicts_deleted:
            self._reclaim_space()
        report.seconds = time.perf_counter() - started
        self.passes += 1
        log.log(
            logging.INFO if report.files_deleted or report.verdicts_deleted or report.outbox_deleted else logging.DEBUG,
            "retention: %d file(s) (%.1f MB), %d verdict(s), %d outbox row(s) deleted; evidence %.1f MB "
            "(%.1f MB protected) in %.2f s",
            report.files_deleted,
            report.bytes_freed / 2**20,
            report.verdicts_deleted,
            report.outbox_deleted,
            report.files_bytes / 2**20,
            report.protected_bytes / 2**20,
            report.seconds,
        )
        return report

    # -- database -------------------------------------------------------------------------------------------------

    def _old_verdicts(self, before: datetime) -> Select[Any]:
        pending = exists().where(Outbox.verdict_id == Verdict.id, Outbox.status == "pending")
        reviewed = exists().where(Feedback.verdict_id == Verdict.id)
        stmt = select(Verdict.id).where(Verdict.processed_at < before, ~pending, ~reviewed).order_by(Verdict.id)
        if self.keep_unbatched:
            stmt = stmt.where(or_(Verdict.anomalous.is_(True), Verdict.batch_id.is_not(None)))  # not UNBATCHED
        return stmt

    def _delete_chunks(self, stmt: Select[Any], table: type[Outbox] | type[Verdict]) -> int:
        """Delete the rows ``stmt`` selects, ``batch_rows`` per transaction (a verdict's outbox rows cascade)."""
        total = 0
        engine = self.store.engine.execution_options(linewatch_write=True)
        while True:
            with engine.begin() as conn:
                ids = list(conn.scalars(stmt.limit(self.cfg.batch_rows)))
                if ids:
                    conn.execute(delete(table).where(table.id.in_(ids)))
            total += len(ids)
            if len(ids) < self.cfg.batch_rows:
                return total
            time.sleep(0.005)  # let a scoring thread's write in between

    def _protected_files(self) -> set[str]:
        """Files an undelivered outbox row or a reviewed verdict points to."""
        pending = select(Outbox.file_path).where(Outbox.status == "pending", Outbox.file_path.is_not(None))
        has_file = or_(Verdict.heatmap_path.is_not(None), Verdict.image_path.is_not(None))
        reviewed = select(Verdict.heatmap_path, Verdict.image_path).where(
            exists().where(Feedback.verdict_id == Verdict.id), has_file
        )
        with self.store.engine.connect() as conn:
            paths: set[str] = {p for (p,) in conn.execute(pending) if p}
            for heatmap, image in conn.execute(reviewed):
                paths.update(p for p in (heatmap, image) if p)
        return {os.path.abspath(p) for p in paths}

    def _reclaim_space(self) -> None:
        """SQLite: give free pages back in small steps, then truncate the WAL. Other backends do this themselves."""
        if not self.store.is_sqlite:
            return
        raw = self.store.engine.raw_connection()  # each PRAGMA its own short write, outside a transaction
        try:
            conn: Any = raw.driver_connection
            while conn.execute("PRAGMA freelist_count").fetchone()[0] > 0:
                conn.execute(f"PRAGMA incremental_vacuum({VACUUM_PAGES})").fetchall()
                time.sleep(0.002)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            raw.close()

    # -- files ----------------------------------------------------------------------------------------------------

    def _prune_files(self, now: float, report: RetentionReport) -> None:
        if self.cfg.files_max_age_days is None and self.cfg.files_max_mb is None:
            return
        protected = self._protected_files()
        files = sorted(self._walk())
        report.files_bytes = sum(f.size for f in files)
        report.protected_bytes = sum(f.size for f in files if f.path in protected)
        cutoff = now - self.cfg.files_max_age_days * 86400 if self.cfg.files_max_age_days is not None else None
        quota = int(self.cfg.files_max_mb * 2**20) if self.cfg.files_max_mb is not None else None
        for f in files:  # oldest first
            too_old = cutoff is not None and f.mtime < cutoff
            over = quota is not None and report.files_bytes > quota
            if not too_old and not over:
                break
            if f.path in protected:
                continue
            try:
                os.unlink(f.path)
            except FileNotFoundError:
                pass
            except OSError as err:
                report.errors.append(f"{f.path}: {err.strerror}")
                continue
            report.files_deleted += 1
            report.bytes_freed += f.size
            report.files_bytes -= f.size
        report.over_quota = quota is not None and report.files_bytes > quota
        if report.over_quota:
            log.error(
                "retention: evidence is %.1f MB, over the %.1f MB quota, and %.1f MB of it waits for delivery or "
                "was reviewed: not deleted",
                report.files_bytes / 2**20,
                quota / 2**20,  # type: ignore[operator]
                report.protected_bytes / 2**20,
            )
        self._remove_empty_folders()

    def _walk(self) -> list[_File]:
        found: list[_File] = []
        for root in self.roots:
            for dirpath, _dirs, names in os.walk(root):
                for name in names:
                    path = os.path.join(dirpath, name)
                    try:
                        st = os.lstat(path)
                    except OSError:
                        continue
                    found.append(_File(st.st_mtime, st.st_blocks * 512 or st.st_size, os.path.abspath(path)))
        return found

    def _remove_empty_folders(self) -> None:
        """Remove emptied day folders; one touched in the last minute stays (a writer may be about to use it)."""
        recent = time.time() - 60.0
        for root in self.roots:
            for dirpath, dirs, names in os.walk(root, topdown=False):
                if dirpath == str(root) or dirs or names:
                    continue
                try:
                    if os.stat(dirpath).st_mtime < recent:
                        os.rmdir(dirpath)
                except OSError:
                    pass  # a file arrived meanwhile, or it is gone already


def _finished_outbox(before: datetime) -> Select[Any]:
    """Delivered or abandoned outbox rows created before ``before``."""
    finished = Outbox.status.in_(("delivered", "dead"))
    return select(Outbox.id).where(finished, Outbox.created_at < before).order_by(Outbox.id)

"""Retention on a real SQLite file and real files: oldest first, by age and quota, never what is undelivered or
reviewed, and SQLite gives the space back."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert

from edge_agent.config import RetentionConfig
from edge_agent.records import OutboxMessage
from edge_agent.retention import Retention
from edge_agent.store import Feedback, Store
from tests.unit.test_store import verdict

NOW = datetime(2026, 6, 1, tzinfo=UTC)
KB = 1024


def evidence(root: Path, name: str, age_days: float, size_kb: int = 8) -> Path:
    """A file of ``size_kb`` whose mtime is ``age_days`` before NOW."""
    path = root / "cam1" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size_kb * KB))
    stamp = (NOW - timedelta(days=age_days)).timestamp()
    os.utime(path, (stamp, stamp))
    return path


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'agent.db'}", clock=lambda: NOW)
    yield s
    s.close()


def retention(store: Store, roots: list[Path], keep_unbatched: bool = False, **cfg) -> Retention:
    base = {"files_max_age_days": None, "files_max_mb": None, "verdicts_max_age_days": None}
    return Retention(RetentionConfig(**{**base, **cfg}), store, roots, keep_unbatched)


def test_files_go_by_age_oldest_first_but_not_an_undelivered_one(tmp_path, store):
    root = tmp_path / "heatmaps"
    old = [evidence(root, f"old{i}.jpg", 40 + i) for i in range(3)]
    young = [evidence(root, f"young{i}.jpg", i) for i in range(3)]
    waiting = evidence(root, "waiting.jpg", 90)  # S3 has not got it yet
    store.record(verdict("w"), [OutboxMessage("s3", "k/w.heatmap.jpg", file_path=str(waiting))])
    report = retention(store, [root], files_max_age_days=30).run_once()
    assert report.files_deleted == 3 and not any(p.exists() for p in old)
    assert all(p.exists() for p in young) and waiting.exists()
    assert report.bytes_freed >= 3 * 8 * KB


def test_quota_deletes_oldest_first_and_says_when_protected_files_alone_exceed_it(tmp_path, store):
    root = tmp_path / "done"
    files = [evidence(root, f"f{i:02d}.png", 20 - i, size_kb=100) for i in range(20)]  # f00 oldest, 2 MB in all
    report = retention(store, [root], files_max_mb=1.0).run_once()
    kept = [p for p in files if p.exists()]
    assert kept == files[-len(kept) :]  # what remains is the newest
    assert report.files_bytes <= 1.0 * 2**20 < report.files_bytes + 100 * KB + 8 * KB
    assert not report.over_quota
    big = evidence(root, "held.png", 30, size_kb=1500)
    store.record(verdict("held"), [OutboxMessage("s3", "k/held.png", file_path=str(big))])
    report = retention(store, [root], files_max_mb=1.0).run_once()
    assert big.exists() and report.over_quota and report.protected_bytes >= 1500 * KB
    assert not any(p.exists() for p in files)  # everything deletable went first


def test_old_rows_go_but_not_undelivered_unbatched_or_reviewed_ones(tmp_path, store):
    old = NOW - timedelta(days=100)
    ids = {}
    for name, anomalous in (("delivered", True), ("pending", True), ("reviewed", True), ("unbatched", False)):
        v = replace(verdict(name, anomalous=anomalous, at=old), heatmap_path=str(tmp_path / f"{name}.jpg"))
        ids[name], _ = store.record(v, [OutboxMessage("mqtt", f"m:{name}", payload="{}", topic="t")])
    store.record(verdict("recent", at=NOW - timedelta(days=1)), [])
    for name in ("delivered", "reviewed", "unbatched"):
        item = next(i for i in store.pending("mqtt", 10) if i.key == f"m:{name}")
        store.mark_delivered(item.id)
    with store.engine.begin() as conn:
        conn.execute(
            insert(Feedback).values(verdict_id=ids["reviewed"], label="defect", reviewer="rita", created_at=NOW)
        )
    report = retention(store, [], keep_unbatched=True, verdicts_max_age_days=90, outbox_max_age_days=7).run_once()
    assert report.verdicts_deleted == 1  # "delivered": the others wait for S3, a batch, or were reviewed
    left = {v for (v,) in store.engine.connect().exec_driver_sql("SELECT frame_id FROM verdicts")}
    assert left == {"pending", "reviewed", "unbatched", "recent"}
    assert store.queue_depths()["mqtt"] == 1  # the undelivered alert row is still there
    # the store's clock dated the outbox rows NOW: too young to go; a month later the delivered ones go
    later = Store(store.url, clock=lambda: NOW + timedelta(days=30))
    report = retention(later, [], keep_unbatched=True, outbox_max_age_days=7).run_once()
    assert report.outbox_deleted == 2 and later.queue_depths()["mqtt"] == 1
    later.close()


def test_deleted_rows_give_their_space_back(tmp_path, store):
    path = tmp_path / "agent.db"
    for i in range(3000):
        store.record(replace(verdict(f"f{i:05d}-" + "x" * 200), anomalous=False), [])
    full = path.stat().st_size
    report = retention(store, [], verdicts_max_age_days=30).run_once()
    assert report.verdicts_deleted == 3000
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA auto_vacuum").scalar() == 2  # incremental
        assert conn.exec_driver_sql("PRAGMA freelist_count").scalar() == 0
    assert path.stat().st_size < full / 4

"""The verdict store on a real SQLite file: migrations, pragmas, atomic idempotent writes, outbox order."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from edge_agent import migrations
from edge_agent.records import OutboxMessage, VerdictRecord
from edge_agent.store import Base, Store, sqlite_path

T0 = datetime(2025, 3, 4, 10, 0, tzinfo=UTC)


def verdict(frame_id: str, camera: str = "cam1", anomalous: bool = True, at: datetime = T0) -> VerdictRecord:
    return VerdictRecord(
        camera=camera,
        source="folder",
        frame_id=frame_id,
        captured_at=at,
        processed_at=at + timedelta(milliseconds=40),
        model_name="patchcore",
        model_version="3",
        model_hash="abc123",
        score=0.91,
        normalised_score=1.4,
        threshold=0.65,
        anomalous=anomalous,
        defect_type="crack" if anomalous else None,
        type_confidence=0.8 if anomalous else None,
        heatmap_path=None,
        image_path=f"/data/{frame_id}.png",
        latency_ms=12.5,
        agent="line1",
    )


def messages(frame_id: str) -> list[OutboxMessage]:
    return [
        OutboxMessage("s3", f"line1/cam1/{frame_id}.json", payload='{"a": 1}'),
        OutboxMessage(
            "mqtt", f"line1:cam1:{frame_id}", payload='{"b": 2}', topic="linewatch/line1/cameras/cam1/alerts"
        ),
    ]


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite:///{tmp_path / 'nested' / 'dir' / 'linewatch.db'}"


@pytest.fixture
def store(db_url):
    s = Store(db_url)
    yield s
    s.close()


def test_migrations_create_schema_matching_models(store, db_url):
    assert sqlite_path(db_url).is_file()  # parent folders were created
    insp = inspect(store.engine)
    assert {"verdicts", "outbox", "alembic_version"} <= set(insp.get_table_names())
    assert {i["name"] for i in insp.get_indexes("verdicts")} >= {
        "ix_verdicts_processed_at",
        "ix_verdicts_camera",
        "ix_verdicts_anomalous",
    }
    assert "ix_outbox_pending" in {i["name"] for i in insp.get_indexes("outbox")}
    uniques = {tuple(u["column_names"]) for u in insp.get_unique_constraints("verdicts")}
    assert ("camera", "frame_id", "agent") in uniques
    assert ("channel", "key") in {tuple(u["column_names"]) for u in insp.get_unique_constraints("outbox")}
    assert migrations.current_revision(store.engine) == migrations.head_revision()
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata) == []


def test_pragmas_are_set_on_every_connection(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'p.db'}", busy_timeout_ms=1234)
    try:
        with s.engine.connect() as a, s.engine.connect() as b:  # two pooled connections
            for conn in (a, b):
                assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
                assert conn.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
                assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
                assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 1234
    finally:
        s.close()


def test_record_is_idempotent_and_round_trips(store):
    v = verdict("f1")
    vid, created = store.record(v, messages("f1"))
    assert created and vid > 0
    assert store.has_verdict("cam1", "f1") and not store.has_verdict("cam2", "f1")
    again, created_again = store.record(v, [*messages("f1"), OutboxMessage("s3", "other")])
    assert (again, created_again) == (vid, False)
    assert store.queue_depths() == {"mqtt": 1, "s3": 1}
    [item] = store.pending("mqtt", 10)
    assert item.verdict_id == vid and item.topic == "linewatch/line1/cameras/cam1/alerts"
    assert item.payload == '{"b": 2}' and item.attempts == 0
    assert item.created_at.tzinfo is not None
    with store.engine.connect() as conn:
        row = conn.execute(text("SELECT captured_at, anomalous, defect_type FROM verdicts WHERE id = :i"), {"i": vid})
        captured, anomalous, defect = row.one()
    assert anomalous == 1 and defect == "crack" and str(captured).startswith("2025-03-04 10:00:00")


def test_record_is_atomic(store):
    store.record(verdict("f1"), messages("f1"))
    clash = [OutboxMessage("s3", "fresh-key"), OutboxMessage("s3", "line1/cam1/f1.json")]  # key already used
    with pytest.raises(IntegrityError):
        store.record(verdict("f2"), clash)
    assert not store.has_verdict("cam1", "f2")  # verdict rolled back with its outbox rows
    assert store.queue_depths()["s3"] == 1
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM outbox WHERE key = 'fresh-key'")).scalar() == 0


def test_foreign_keys_enforced(store):
    with pytest.raises(IntegrityError), store.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO outbox (verdict_id, channel, key, content_type, status, attempts, next_attempt_at,"
                " created_at) VALUES (999, 's3', 'k', 'x', 'pending', 0, :t, :t)"
            ),
            {"t": datetime(2025, 1, 1)},
        )


def test_outbox_order_limit_and_channels(store):
    for i in range(5):
        store.record(verdict(f"f{i}"), messages(f"f{i}"))
    mqtt = store.pending("mqtt", 10)
    assert [m.key for m in mqtt] == [f"line1:cam1:f{i}" for i in range(5)]
    assert [m.id for m in mqtt] == sorted(m.id for m in mqtt)
    assert [m.key for m in store.pending("s3", 2)] == ["line1/cam1/f0.json", "line1/cam1/f1.json"]
    store.mark_delivered(mqtt[0].id)
    assert store.pending("mqtt", 10)[0].key == "line1:cam1:f1"
    assert store.queue_depths() == {"mqtt": 4, "s3": 5}


def test_backoff_fields_and_strict_order(store):
    for i in range(3):
        store.record(verdict(f"f{i}"), messages(f"f{i}"))
    first, second, _ = store.pending("mqtt", 10)
    now = datetime.now(UTC)
    store.mark_delivered(first.id)
    store.mark_failed(second.id, "broker down", now + timedelta(seconds=30))
    # the row in back-off holds back everything after it in its channel, not the other channel
    assert store.pending("mqtt", 10, now=now) == []
    assert len(store.pending("s3", 10, now=now)) == 3
    later = store.pending("mqtt", 10, now=now + timedelta(seconds=31))
    assert later[0].id == second.id and len(later) == 2
    assert later[0].attempts == 1
    store.mark_failed(second.id, "x" * 5000, now + timedelta(seconds=60))
    with store.engine.connect() as conn:
        attempts, error, status = conn.execute(
            text("SELECT attempts, last_error, status FROM outbox WHERE id = :i"), {"i": second.id}
        ).one()
    assert (attempts, len(error), status) == (2, 2000, "pending")
    store.mark_dead(second.id, "gone")  # a dead row no longer blocks its channel
    assert [m.key for m in store.pending("mqtt", 10, now=now)] == ["line1:cam1:f2"]
    assert store.queue_depths()["mqtt"] == 1


def test_delivered_rows_get_a_timestamp(store):
    store.record(verdict("f1"), messages("f1"))
    [item] = store.pending("s3", 1)
    store.mark_delivered(item.id)
    with store.engine.connect() as conn:
        status, delivered_at = conn.execute(
            text("SELECT status, delivered_at FROM outbox WHERE id = :i"), {"i": item.id}
        ).one()
    assert status == "delivered" and delivered_at is not None
    assert store.pending("s3", 10) == []


def test_counts_per_camera(store):
    store.record(verdict("a", "cam1", True), [])
    store.record(verdict("b", "cam1", False), [])
    store.record(verdict("c", "cam2", False, at=T0 - timedelta(days=2)), [])
    assert store.counts() == {"cam1": {"frames": 2, "anomalies": 1}, "cam2": {"frames": 1, "anomalies": 0}}
    assert store.counts(since=T0 - timedelta(hours=1)) == {"cam1": {"frames": 2, "anomalies": 1}}


def test_integrity_check(tmp_path):
    path = tmp_path / "c.db"
    s = Store(f"sqlite:///{path}")
    for i in range(300):
        s.record(verdict(f"frame-{i:04d}-" + "x" * 100), [])
    assert s.integrity_ok()
    s.close()
    size = path.stat().st_size
    with path.open("r+b") as f:  # scribble over the second half: index and table pages
        f.seek(size // 2)
        f.write(b"\xff" * (size // 2 - 4096))
    s = Store(f"sqlite:///{path}")
    try:
        assert not s.integrity_ok()
    finally:
        s.close()


def test_one_writer_and_one_delivery_thread(store):
    errors: list[BaseException] = []
    done = threading.Event()

    def writer() -> None:
        try:
            for i in range(150):
                store.record(verdict(f"w{i}"), messages(f"w{i}"))
        except BaseException as err:
            errors.append(err)
        finally:
            done.set()

    def deliverer() -> None:
        try:
            while not done.is_set() or store.queue_depths()["mqtt"]:
                for item in store.pending("mqtt", 20):
                    store.mark_delivered(item.id)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=writer), threading.Thread(target=deliverer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert store.queue_depths() == {"mqtt": 0, "s3": 150}
    assert store.counts()["cam1"]["frames"] == 150


def test_old_revision_is_backed_up_before_migrating(tmp_path):
    path = tmp_path / "old.db"
    engine = create_engine(f"sqlite:///{path}")
    assert migrations.upgrade(engine, "0001") == "0001"
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO verdicts (camera, source, frame_id, captured_at, processed_at, model_name, model_version,"
                " model_hash, score, normalised_score, threshold, anomalous, latency_ms)"
                " VALUES ('cam1', 'folder', 'legacy', :t, :t, 'm', '1', 'h', 0.1, 0.1, 0.5, 0, 3.0)"
            ),
            {"t": datetime(2024, 12, 31, 23, 0)},
        )
    engine.dispose()

    s = Store(f"sqlite:///{path}")
    try:
        assert migrations.current_revision(s.engine) == migrations.head_revision() != "0001"
        assert s.has_verdict("cam1", "legacy")
    finally:
        s.close()
    backup = tmp_path / "old.db.bak-0001"
    assert backup.is_file()
    conn = sqlite3.connect(backup)
    try:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0001",)]
        assert conn.execute("SELECT frame_id FROM verdicts").fetchall() == [("legacy",)]
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA journal_mode").fetchall() == [("delete",)]
    finally:
        conn.close()

    s = Store(f"sqlite:///{path}")  # already at head: no new backup
    s.close()
    assert sorted(p.name for p in tmp_path.glob("old.db.bak-*")) == ["old.db.bak-0001"]


def test_base_revision_backup_and_fresh_db_without_backup(tmp_path):
    fresh = tmp_path / "fresh.db"
    Store(f"sqlite:///{fresh}").close()
    assert list(tmp_path.glob("*.bak-*")) == []  # a new file needs no backup

    engine = create_engine(f"sqlite:///{fresh}")
    assert migrations.downgrade(engine, "base") is None
    engine.dispose()
    Store(f"sqlite:///{fresh}").close()
    assert (tmp_path / "fresh.db.bak-base").is_file()


def test_other_urls_are_not_files(tmp_path):
    assert sqlite_path("sqlite://") is None
    assert sqlite_path("postgresql+psycopg://u@h/db") is None
    mem = Store("sqlite://")  # in-memory: shared by threads through one connection
    try:
        assert mem.record(verdict("m"), messages("m")) == (1, True)
        seen: list[int] = []
        t = threading.Thread(target=lambda: seen.extend(i.verdict_id for i in mem.pending("s3", 1)))
        t.start()
        t.join(10)
        assert seen == [1]
        assert mem.integrity_ok()
    finally:
        mem.close()


def test_fleet_migration_keeps_outbox_and_feedback_rows(tmp_path):
    """0004 -> head rebuilds ``verdicts`` on SQLite; with foreign keys on, the old table's drop would cascade."""
    path = tmp_path / "fleet.db"
    engine = create_engine(f"sqlite:///{path}")
    assert migrations.upgrade(engine, "0004") == "0004"
    engine.dispose()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(
            "INSERT INTO verdicts (camera, source, frame_id, captured_at, processed_at, model_name, model_version,"
            " model_hash, score, normalised_score, threshold, anomalous, latency_ms)"
            " VALUES ('cam1', 'folder', 'old', '2025-01-01 00:00:00', '2025-01-01 00:00:00', 'm', '1', 'h',"
            " 0.9, 0.9, 0.5, 1, 3.0)"
        )
        conn.execute(
            "INSERT INTO outbox (verdict_id, channel, key, content_type, status, attempts, next_attempt_at,"
            " created_at) VALUES (1, 's3', 'k', 'application/json', 'pending', 0, '2025-01-01', '2025-01-01')"
        )
        conn.execute(
            "INSERT INTO feedback (verdict_id, label, reviewer, created_at)"
            " VALUES (1, 'false_alarm', 'ann', '2025-01-01')"
        )
    conn.close()

    s = Store(f"sqlite:///{path}")
    try:
        with s.engine.connect() as c:
            assert c.exec_driver_sql("SELECT agent, frame_id FROM verdicts").all() == [("", "old")]
            assert c.exec_driver_sql("SELECT count(*) FROM outbox").scalar() == 1
            assert c.exec_driver_sql("SELECT count(*) FROM feedback").scalar() == 1
            assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1  # back on for the store's connections
        assert s.adopt("line1") == 1 and s.adopt("line1") == 0
        assert s.has_verdict("cam1", "old")
        assert s.record(verdict("old"), [])[1] is False  # the adopted row is the same frame
        assert s.record(replace(verdict("old"), agent="line2"), [])[1] is True  # another line's cam1 may share it
    finally:
        s.close()

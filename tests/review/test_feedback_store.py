"""The feedback table (migration 0003) and the review store's queries and its one write."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from edge_agent import migrations
from edge_agent.store import Base, Feedback, Store
from review.auth import User
from review.db import FeedbackRefusedError, QueueFilter, ReviewStore
from tests.review.factory import record
from tests.services import pg_url, postgres  # noqa: F401

RITA = User("rita", "reviewer")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """The review store on a SQLite file and on a real PostgreSQL server: same URL form, same migrations."""
    url = f"sqlite:///{tmp_path / 'r.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    s = ReviewStore(url)
    now = datetime.now(UTC)
    for i, (camera, score, kind) in enumerate(
        [("a", 20.0, "crack"), ("a", 12.0, None), ("b", 30.0, "dent"), ("b", 4.0, None)]
    ):
        s.store.record(record(camera, f"f{i}", now - timedelta(minutes=i), score, defect_type=kind), [])
    yield s
    s.close()


def test_demo_database_at_0002_upgrades_with_a_backup_and_downgrades(tmp_path):
    path = tmp_path / "old.db"
    engine = create_engine(f"sqlite:///{path}")
    assert migrations.upgrade(engine, "0002") == "0002"
    engine.dispose()
    legacy = Store(f"sqlite:///{path}")  # the agent's own path: to head
    legacy.close()
    assert (tmp_path / "old.db.bak-0002").is_file()
    store = ReviewStore(f"sqlite:///{path}")
    insp = inspect(store.engine)
    assert "feedback" in insp.get_table_names()
    assert {c["name"] for c in insp.get_columns("feedback")} == {
        "id",
        "verdict_id",
        "label",
        "defect_type",
        "reviewer",
        "note",
        "created_at",
    }
    (fk,) = insp.get_foreign_keys("feedback")
    assert (fk["referred_table"], fk["referred_columns"]) == ("verdicts", ["id"])
    assert "ix_feedback_verdict_id" in {i["name"] for i in insp.get_indexes("feedback")}
    assert migrations.downgrade(store.engine, "0002") == "0002"
    assert "feedback" not in inspect(store.engine).get_table_names()
    store.close()


def test_check_constraints_hold_without_the_page(store):
    vid = store.queue(QueueFilter())[0].id
    for label, kind in (("maybe", None), ("false_alarm", "crack")):
        with pytest.raises(IntegrityError), store.store._writer.begin() as session:
            session.add(
                Feedback(verdict_id=vid, label=label, defect_type=kind, reviewer="x", created_at=datetime.now(UTC))
            )
    with pytest.raises(IntegrityError), store.engine.begin() as conn:  # the foreign key is enforced (pragma on)
        conn.execute(
            text("INSERT INTO feedback (verdict_id, label, reviewer, created_at) VALUES (999, 'unsure', 'x', :t)"),
            {"t": datetime(2026, 1, 1)},
        )


def test_feedback_history_latest_wins_and_refusals(store):
    crack = next(r for r in store.queue(QueueFilter()) if r.defect_type == "crack")
    store.add_feedback(RITA, crack.id, "defect", " crack ", note="  at the rim ")
    store.add_feedback(User("sam", "reviewer"), crack.id, "false_alarm", "crack")  # the type is dropped
    history = store.history(crack.id)
    assert [(h.label, h.defect_type, h.reviewer, h.note) for h in history] == [
        ("defect", "crack", "rita", "at the rim"),
        ("false_alarm", None, "sam", None),
    ]
    assert history[0].created_at.tzinfo is not None
    latest = store.verdict(crack.id)
    assert (latest.label, latest.reviewer, latest.confirmed_type) == ("false_alarm", "sam", None)
    with pytest.raises(FeedbackRefusedError, match="read-only"):
        store.add_feedback(User("vic", "viewer"), crack.id, "unsure")
    for label, kind in (("maybe", None), ("defect", None), ("defect", "a/b"), ("defect", "x" * 65)):
        with pytest.raises(FeedbackRefusedError):
            store.add_feedback(RITA, crack.id, label, kind)
    with pytest.raises(FeedbackRefusedError, match="does not exist"):
        store.add_feedback(RITA, 999, "unsure")
    assert len(store.history(crack.id)) == 2
    assert [r.id for r in store.reviewed()] == [crack.id]
    assert store.reviewed(("defect",)) == []


def test_queries_filter_and_count(store):
    assert store.cameras() == ["a", "b"]
    assert store.count(QueueFilter()) == 3  # anomalous only
    assert store.count(QueueFilter(anomalous_only=False)) == 4
    assert [r.frame_id for r in store.queue(QueueFilter(cameras=("b",)))] == ["f2"]
    assert [r.frame_id for r in store.queue(QueueFilter(), limit=2, offset=1)] == ["f1", "f2"]
    assert store.count(QueueFilter(since=datetime.now(UTC) + timedelta(minutes=1))) == 0
    store.add_feedback(RITA, store.queue(QueueFilter(cameras=("a",)))[1].id, "defect", "dent")
    assert store.defect_types() == ["crack", "dent"]
    assert [r.frame_id for r in store.queue(QueueFilter(defect_types=("dent",)))] == [
        "f1",
        "f2",
    ]  # confirmed or predicted
    assert [r.frame_id for r in store.queue(QueueFilter(reviewed=True))] == ["f1"]
    df = store.frame()
    assert len(df) == 4 and df["processed_at"].dt.tz is not None
    assert df.set_index("frame_id")["label"].to_dict()["f1"] == "defect"


def test_sql_never_built_from_strings():
    import review

    for path in Path(review.__file__).parent.rglob("*.py"):
        source = path.read_text()
        assert not re.search(r"from sqlalchemy import[^\n]*\btext\b|exec_driver_sql|\.execute\(\s*f?[\"']", source), (
            path
        )
        assert not re.search(r"[\"'](SELECT|INSERT|UPDATE|DELETE) ", source), path


def test_feedback_written_by_the_page_is_plain_sql_data(store):
    vid = store.queue(QueueFilter())[0].id
    store.add_feedback(RITA, vid, "unsure", note="Robert'); DROP TABLE verdicts;--")
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT note FROM feedback")).scalar_one().startswith("Robert')")
        assert conn.execute(text("SELECT COUNT(*) FROM verdicts")).scalar_one() == 4


def test_schema_matches_models_and_migrations_round_trip(store):
    """On both backends: the migrated schema is the models' schema; down to base and up again works."""
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata) == []
    assert migrations.downgrade(store.engine, "base") is None
    assert inspect(store.engine).get_table_names() == ["alembic_version"]
    assert migrations.upgrade(store.engine) == migrations.head_revision()
    uniques = {tuple(u["column_names"]) for u in inspect(store.engine).get_unique_constraints("verdicts")}
    assert ("camera", "frame_id", "agent") in uniques

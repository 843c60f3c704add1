"""The review page under Streamlit's AppTest, on a real SQLite database of verdict rows and real images."""

from __future__ import annotations

import csv
import sqlite3
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import yaml

from edge_agent.store import Store
from review.auth import User
from review.db import FeedbackRefusedError, ReviewStore
from tests.review.factory import REVIEWER, REVIEWER_PW, VIEWER, VIEWER_PW, app_test, goto, login, record, write_config


def texts(elements) -> list[str]:
    return [str(e.value) for e in elements]


def feedback_rows(db) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT verdict_id, label, defect_type, reviewer, note, created_at FROM feedback"
        ).fetchall()


def table(at, column: str):
    """The first dataframe on the page with ``column`` (dataframes without selections carry no key)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def queue_ids(at) -> list[int]:
    return [int(i) for d in at.dataframe if "review" in d.value.columns for i in d.value["id"]]


def test_wrong_password_and_unknown_user_are_refused(queue_env):
    at = login(app_test(), REVIEWER, "not-the-password")
    assert any("Wrong user name or password" in t for t in texts(at.error))
    assert "user" not in at.session_state
    assert not at.sidebar.radio  # no navigation before logging in
    at = login(app_test(), "mallory", REVIEWER_PW)
    assert any("Wrong user name or password" in t for t in texts(at.error))
    at = login(app_test(), REVIEWER, REVIEWER_PW)
    assert not at.error and at.session_state["user"] == User(REVIEWER, "reviewer")


def test_reviewer_feedback_lands_in_the_database_and_latest_wins(queue_env):
    at = goto(login(app_test(), REVIEWER, REVIEWER_PW), "Review queue")
    vid = queue_env.ids["cam1"][0]
    assert vid in queue_ids(at) and len(queue_ids(at)) == 5
    assert at.radio(key=f"fb_label_{vid}").value is None  # nothing preselected for an unreviewed alarm
    assert at.selectbox(key=f"fb_type_{vid}").value == "broken_large"  # the agent's guess is preselected
    at.radio(key=f"fb_label_{vid}").set_value("defect")
    at.text_input(key=f"fb_note_{vid}").input("crack at the neck")
    at.button(key=f"fb_submit_{vid}").click()
    at.run()
    assert any(f"Saved: #{vid} is a confirmed defect (broken_large), by {REVIEWER}" in t for t in texts(at.success))
    (row,) = feedback_rows(queue_env.db)
    assert row[:5] == (vid, "defect", "broken_large", REVIEWER, "crack at the neck")
    assert abs(datetime.fromisoformat(row[5]).replace(tzinfo=UTC) - datetime.now(UTC)) < timedelta(minutes=1)
    assert vid not in queue_ids(at)  # default filter: not reviewed yet

    at.radio(key="q_reviewed").set_value("reviewed").run()
    assert queue_ids(at) == [vid]
    at.radio(key=f"fb_label_{vid}").set_value("false_alarm")
    at.button(key=f"fb_submit_{vid}").click()
    at.run()
    assert [r[1] for r in feedback_rows(queue_env.db)] == ["defect", "false_alarm"]  # history kept
    assert table(at, "review")["review"].tolist() == ["false alarm"]  # the latest one counts


def test_a_confirmed_defect_needs_a_type_and_a_label(queue_env):
    at = goto(login(app_test(), REVIEWER, REVIEWER_PW), "Review queue")
    vid = queue_env.ids["cam2"][1]  # no predicted type: "other" is preselected
    at.button(key=f"fb_submit_{vid}").click()
    at.run()
    assert any("choose defect, false alarm or unsure" in t for t in texts(at.error))
    at.radio(key=f"fb_label_{vid}").set_value("defect")
    at.text_input(key=f"fb_new_type_{vid}").input("../../etc")
    at.button(key=f"fb_submit_{vid}").click()
    at.run()
    assert any("needs its type" in t for t in texts(at.error))
    at.text_input(key=f"fb_new_type_{vid}").input("scratch")
    at.button(key=f"fb_submit_{vid}").click()
    at.run()
    assert [r[1:3] for r in feedback_rows(queue_env.db)] == [("defect", "scratch")]


def test_viewer_sees_disabled_widgets_and_cannot_write(queue_env):
    at = goto(login(app_test(), VIEWER, VIEWER_PW), "Review queue")
    vid = queue_env.ids["cam1"][0]
    assert any("viewer" in t for t in texts(at.info))
    assert at.radio(key=f"fb_label_{vid}").disabled
    assert at.selectbox(key=f"fb_type_{vid}").disabled
    assert at.button(key=f"fb_submit_{vid}").disabled
    assert not [b for b in at.button if b.key == "q_export"]
    assert any("Exports are for reviewers" in t for t in texts(at.info))
    # a forged submission (the callback called with the viewer's session) is refused by the store
    store = ReviewStore(f"sqlite:///{queue_env.db}")
    with pytest.raises(FeedbackRefusedError, match="read-only"):
        store.add_feedback(at.session_state["user"], vid, "false_alarm")
    store.close()
    assert feedback_rows(queue_env.db) == []


def test_queue_filters(queue_env):
    ids = queue_env.ids
    at = goto(login(app_test(), REVIEWER, REVIEWER_PW), "Review queue")
    assert sorted(queue_ids(at)) == sorted(ids["cam1"] + ids["cam2"])
    at.multiselect(key="q_cameras").set_value(["cam2"]).run()
    assert queue_ids(at) == [ids["cam2"][0], ids["cam2"][1]]  # newest first
    at.multiselect(key="q_cameras").set_value([]).run()
    assert at.multiselect(key="q_agents").options == ["line1", "line2"]
    at.multiselect(key="q_agents").set_value(["line1"]).run()  # a fleet: one line's alarms, its cameras only
    assert sorted(queue_ids(at)) == sorted(ids["cam1"]) and at.multiselect(key="q_cameras").options == ["cam1"]
    at.multiselect(key="q_agents").set_value([]).run()
    at.multiselect(key="q_types").set_value(["contamination"]).run()
    assert queue_ids(at) == [ids["cam1"][2]]
    at.multiselect(key="q_types").set_value(["(none)"]).run()
    assert queue_ids(at) == [ids["cam2"][1]]
    at.multiselect(key="q_types").set_value([]).run()
    at.slider(key="q_score").set_value((0.0, 0.9)).run()  # scores 12 and 11 normalise to 0.7 and 0.6
    assert sorted(queue_ids(at)) == sorted([ids["cam1"][2], ids["cam2"][1]])
    at.slider(key="q_score").set_value((0.0, 1.0)).run()
    at.selectbox(key="q_range").set_value("1h").run()
    assert queue_ids(at) == [] and any(t.startswith("0 matching") for t in texts(at.caption))
    at.selectbox(key="q_range").set_value("24h").run()
    assert len(queue_ids(at)) == 5
    store = ReviewStore(f"sqlite:///{queue_env.db}")
    store.add_feedback(User(REVIEWER, "reviewer"), ids["cam1"][1], "unsure")
    store.close()
    at.radio(key="q_reviewed").set_value("reviewed").run()
    assert queue_ids(at) == [ids["cam1"][1]]
    at.radio(key="q_reviewed").set_value("all").run()
    assert len(queue_ids(at)) == 5


def test_statistics_counts_and_false_alarm_rate(queue_env):
    store = ReviewStore(f"sqlite:///{queue_env.db}")
    rita = User(REVIEWER, "reviewer")
    store.add_feedback(rita, queue_env.ids["cam1"][0], "defect", "broken_large")
    store.add_feedback(rita, queue_env.ids["cam2"][1], "false_alarm")
    store.add_feedback(rita, queue_env.ids["cam2"][0], "unsure")
    store.close()
    at = goto(login(app_test(), REVIEWER, REVIEWER_PW), "Statistics")
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Frames"] == "25" and metrics["Anomalous"] == "5" and metrics["Anomaly rate"] == "20.0%"
    assert metrics["Reviewed anomalous frames"] == "3" and metrics["False-alarm rate"] == "50%"
    rates = table(at, "false-alarm rate").set_index("camera")  # two lines: cameras named <agent>/<camera>
    assert rates.loc["line2/cam2", "false alarms"] == 1 and rates.loc["line2/cam2", "unsure"] == 1
    assert rates.loc["line1/cam1", "false-alarm rate"] == 0.0
    specs = " ".join(c.proto.spec for c in at.get("vega_lite_chart"))
    for title in ("Frames per hour", "Defects (anomalous verdicts) per hour", "Defect types", "Normalised scores"):
        assert title in specs
    at.radio(key="s_bucket").set_value("day").run()
    assert not at.exception


def test_drift_warning_on_a_shifted_normal_score_distribution(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    now = datetime.now(UTC)
    store = Store(f"sqlite:///{tmp_path / 'drift.db'}")
    for camera, shift in (("shifted", 2.0), ("steady", 0.0)):
        for i in range(60):  # reference: 2 to 7 days ago; recent: the last 20 hours
            old = now - timedelta(hours=30 + i * 2)
            new = now - timedelta(minutes=10 + i * 20)
            store.record(record(camera, f"ref_{i}", old, float(rng.normal(6.0, 0.5))), [])
            store.record(record(camera, f"new_{i}", new, float(rng.normal(6.0 + shift * 0.5, 0.5))), [])
    store.close()
    monkeypatch.setenv("LINEWATCH_REVIEW_CONFIG", str(write_config(tmp_path, f"sqlite:///{tmp_path / 'drift.db'}")))
    at = goto(login(app_test(), REVIEWER, REVIEWER_PW), "Statistics")
    warnings = texts(at.warning)
    assert len(warnings) == 1 and "Score drift on camera shifted" in warnings[0]
    drift = table(at, "KS D").set_index("camera")
    assert drift.loc["shifted", "KS D"] > 0.5 and abs(drift.loc["shifted", "shift (spreads)"]) > 1.0
    assert drift.loc["steady", "result"] == "no drift"
    assert drift.loc["steady", "reference frames"] == 60 and drift.loc["steady", "recent frames"] == 60


def test_export_writes_the_folder_layout_training_reads(queue_env):
    from training.config import DatasetConfig
    from training.data import load_dataset

    store = ReviewStore(f"sqlite:///{queue_env.db}")
    rita = User(REVIEWER, "reviewer")
    ids = queue_env.ids
    store.add_feedback(rita, ids["cam1"][0], "defect", "broken_large")
    store.add_feedback(rita, ids["cam1"][1], "defect", "broken_large")
    store.add_feedback(rita, ids["cam1"][2], "defect", "contamination")
    store.add_feedback(rita, ids["cam2"][1], "false_alarm")
    store.add_feedback(rita, ids["cam2"][0], "unsure")
    store.close()
    at = goto(login(app_test(), REVIEWER, REVIEWER_PW), "Review queue")
    at.button(key="q_export").click()
    at.run()
    assert any("Exported 4 images" in t and "1 unsure left out" in t for t in texts(at.success))
    (out,) = list((queue_env.tmp / "exports").iterdir())
    assert sorted(p.name for p in out.iterdir()) == [
        "broken_large",
        "contamination",
        "dataset.yaml",
        "good",
        "labels.csv",
    ]
    assert sorted(p.name for p in (out / "good").iterdir()) == [f"{ids['cam2'][1]}_good_000.png"]
    assert len(list((out / "broken_large").iterdir())) == 2
    with (out / "labels.csv").open() as fh:
        lines = list(csv.DictReader(fh))
    assert {(r["label"], r["defect_type"], r["reviewer"]) for r in lines} == {
        ("defect", "broken_large", REVIEWER),
        ("defect", "contamination", REVIEWER),
        ("false_alarm", "", REVIEWER),
    }
    assert len(at.download_button) == 1
    dataset = DatasetConfig.model_validate(
        yaml.safe_load((out / "dataset.yaml").read_text())["dataset"] | {"test_fraction": 0.0}
    )
    splits = load_dataset(dataset)
    assert splits.defect_types == ["broken_large", "contamination"]
    assert len(splits.train) + len(splits.validation) == 1 and not splits.skipped


def test_models_guide_and_inspect_pages_without_bundles(queue_env):
    store = ReviewStore(f"sqlite:///{queue_env.db}")
    store.add_feedback(User(REVIEWER, "reviewer"), queue_env.ids["cam1"][0], "defect", "broken_large")
    store.close()
    at = login(app_test(), VIEWER, VIEWER_PW)
    for page in ("Inspect", "Models"):
        goto(at, page)
        assert not at.exception and any("bundle" in t for t in texts(at.info)), page
    goto(at, "Guide")
    assert not at.exception
    assert "broken_large" in " ".join(texts(at.markdown))
    assert [c for i in at.get("image") for c in i.captions] == ["000.png"]
    at.sidebar.button(key="logout").click().run()
    assert "user" not in at.session_state and at.text_input(key="login_name")


def test_invalid_config_is_reported_with_its_key_path(tmp_path, monkeypatch):
    path = tmp_path / "bad.yaml"
    path.write_text("users: [{name: a, role: admin, password_hash_env: X}]\nqueue: {page_sise: 3}\n")
    monkeypatch.setenv("LINEWATCH_REVIEW_CONFIG", str(path))
    at = app_test()
    at.run()
    assert texts(at.error) == ["The review config is invalid."]
    assert "users.0.role" in at.code[0].value and "queue.page_sise" in at.code[0].value

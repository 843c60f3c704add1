"""Statistics maths, the drift rule, heatmap outlines, bundle discovery and the export's edge cases."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from edge_agent.heatmap import render_heatmap
from review import models_info as mi
from review import stats
from review.config import DriftSection
from review.db import ReviewStore
from review.export import export_dataset
from review.media import draw_outline, outline_mask

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def frame(rows: list[tuple]) -> pd.DataFrame:
    cols = [
        "camera",
        "processed_at",
        "score",
        "normalised_score",
        "anomalous",
        "defect_type",
        "label",
        "confirmed_type",
    ]
    df = pd.DataFrame(rows, columns=cols)
    df["processed_at"] = pd.to_datetime(df["processed_at"], utc=True)
    return df.assign(id=range(len(df)), model_hash="h", model_name="m", model_version="1")


def test_ks_statistic_and_p_value():
    a, b = np.arange(10.0), np.arange(10.0) + 5
    assert stats.ks_statistic(a, b) == pytest.approx(0.5)
    assert stats.ks_statistic(a, a) == 0.0 and stats.ks_statistic(a, np.array([])) == 0.0
    en = np.sqrt(10000 * 10000 / 20000)  # Kolmogorov's critical values: lambda 1.358 -> p 0.05, 1.628 -> p 0.01
    assert stats.ks_pvalue(1.358 / (en + 0.12 + 0.11 / en), 10000, 10000) == pytest.approx(0.05, abs=0.001)
    assert stats.ks_pvalue(1.628 / (en + 0.12 + 0.11 / en), 10000, 10000) == pytest.approx(0.01, abs=0.0005)
    assert stats.ks_pvalue(0.0, 10, 10) == 1.0
    rng = np.random.default_rng(1)
    assert stats.ks_pvalue(stats.ks_statistic(rng.normal(size=200), rng.normal(size=200)), 200, 200) > 0.01
    assert stats.robust_spread(rng.normal(0, 2, 20000)) == pytest.approx(2.0, rel=0.05)
    assert stats.robust_spread(np.ones(5)) > 0


def test_counts_breakdown_and_false_alarm_rate():
    t0 = NOW - timedelta(hours=3)
    df = frame(
        [
            ("a", t0, 1.0, 0.1, False, None, None, None),
            ("a", t0 + timedelta(minutes=5), 9.0, 0.9, True, "crack", "defect", "crack"),
            ("a", t0 + timedelta(hours=1), 8.0, 0.8, True, "crack", "false_alarm", None),
            ("b", t0 + timedelta(hours=1), 7.0, 0.7, True, None, "unsure", None),
            ("b", t0 + timedelta(hours=1), 7.5, 0.7, True, "dent", "defect", "crack"),
        ]
    )
    counts = stats.counts_over_time(df, "hour")
    assert counts[["camera", "frames", "defects"]].values.tolist() == [["a", 2, 1], ["a", 1, 1], ["b", 2, 2]]
    assert stats.counts_over_time(df, "day")["frames"].sum() == 5
    breakdown = stats.defect_breakdown(df).set_index(["type", "source"])["n"].to_dict()
    assert breakdown == {
        ("crack", "predicted"): 2,
        ("(untyped)", "predicted"): 1,
        ("dent", "predicted"): 1,
        ("crack", "confirmed"): 2,
    }
    rates = {r.camera: r for r in stats.false_alarm_rates(df)}
    assert rates["a"].rate == 0.5 and rates["b"].rate == 0.0 and rates["b"].unsure == 1
    assert rates["all"].reviewed == 4 and rates["all"].rate == pytest.approx(1 / 3)
    assert list(stats.score_distribution(df)["verdict"]) == ["normal"] + ["anomalous"] * 4


def test_drift_rule_windows_thresholds_and_minimum_samples():
    rng = np.random.default_rng(0)
    rule = DriftSection(recent_hours=24, reference_hours=72, min_samples=30, ks_threshold=0.3, median_shift=1.0)

    def scores(camera: str, shift: float, n_recent: int = 40) -> list[tuple]:
        old = [
            (camera, NOW - timedelta(hours=30 + i), float(rng.normal(5, 1)), 0.1, False, None, None, None)
            for i in range(40)
        ]
        new = [
            (camera, NOW - timedelta(hours=1 + i / 2), float(rng.normal(5 + shift, 1)), 0.1, False, None, None, None)
            for i in range(n_recent)
        ]
        too_old = [(camera, NOW - timedelta(hours=200), 50.0, 0.1, False, None, None, None)]  # outside both windows
        alarm = [(camera, NOW - timedelta(hours=2), 90.0, 1.0, True, None, None, None)]  # not a normal frame
        return old + new + too_old + alarm

    df = frame(scores("moved", 1.5) + scores("same", 0.0) + scores("few", 3.0, n_recent=10))
    results = {r.camera: r for r in stats.drift(df, rule, NOW)}
    assert results["moved"].warn and results["moved"].shift_in_spreads > 1.0 and "KS D" in results["moved"].reason
    assert not results["same"].warn and results["same"].reason == "no drift"
    assert (results["same"].n_reference, results["same"].n_recent) == (40, 40)
    assert not results["few"].warn and not results["few"].enough_data


def test_outline_is_recovered_from_a_jpeg_heatmap_and_drawn_on_the_original(tmp_path):
    import cv2

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (128, 160, 3), dtype=np.uint8)
    image[:, :40] = 255  # white part: the JET overlay over it must not count as outline
    amap = np.zeros((64, 64), np.float32)
    amap[20:40, 30:50] = 10.0
    overlay = render_heatmap(image, amap, 0.0, 10.0, predicted_mask=amap > 5)
    cv2.imwrite(str(tmp_path / "h.jpg"), overlay, [cv2.IMWRITE_JPEG_QUALITY, 90])
    heatmap = cv2.cvtColor(cv2.imread(str(tmp_path / "h.jpg")), cv2.COLOR_BGR2RGB)
    mask = outline_mask(heatmap)
    ys, xs = np.nonzero(mask)
    assert mask.sum() > 50 and ys.min() >= 35 and ys.max() <= 85 and xs.min() >= 70 and xs.max() <= 130
    drawn = draw_outline(image, heatmap)
    assert (drawn[mask] == (255, 0, 255)).all() and (drawn[~mask] == image[~mask]).all()
    assert (draw_outline(image, None) == image).all()


def test_bundles_are_found_verified_and_matched_to_runs(tmp_path):
    bundles, runs = tmp_path / "bundles", tmp_path / "runs"
    good = bundles / "good"
    good.mkdir(parents=True)
    (good / "memory_bank.npy").write_bytes(b"bank")
    manifest = {
        "format_version": 3,
        "name": "bottle-patchcore-int8",
        "version": "v2",
        "created": "2026-02-01T00:00:00Z",
        "files": {"memory_bank.npy": "0" * 64},
        "models": {"scorer": {"source_model": "bottle-patchcore"}, "classifier": {"source_model": "bottle-cls"}},
        "metrics": {
            "scorer": {"precision": "int8", "auroc_float": 0.99, "auroc_export": 0.98, "size_float_bytes": 2e6}
        },
    }
    (good / "manifest.json").write_text(json.dumps(manifest))
    (bundles / "not-a-bundle").mkdir()
    for name, meta in {
        "d/patchcore": {"name": "bottle-patchcore", "created": "2026-03-01", "files": {"memory_bank.npy": "0" * 64}},
        "e/patchcore": {"name": "bottle-patchcore", "created": "2026-01-01", "files": {}},
        "d/cls-old": {"name": "bottle-cls", "created": "2026-01-01"},
        "d/cls-new": {"name": "bottle-cls", "created": "2026-01-15"},
        "d/cls-late": {"name": "bottle-cls", "created": "2026-02-15"},
    }.items():
        (runs / name).mkdir(parents=True)
        (runs / name / "meta.json").write_text(json.dumps(meta))
    (info,) = mi.find_bundles(bundles, runs)
    assert not info.verified and "SHA-256 of memory_bank.npy" in info.problem  # the agent's own check
    assert info.runs == {"scorer": runs / "d/patchcore", "classifier": runs / "d/cls-new"}
    table = mi.float_vs_export(manifest["metrics"]["scorer"], mi.SCORER_PAIRS)
    assert table.values.tolist() == [["image AUROC", "float32", 0.99], ["image AUROC", "int8", 0.98]]
    cm = mi.confusion_frame([[19, 1], [0, 63]], ["normal", "defect"])
    assert cm.values.tolist() == [
        ["normal", "normal", 19],
        ["normal", "defect", 1],
        ["defect", "normal", 0],
        ["defect", "defect", 63],
    ]
    assert mi.find_bundles(tmp_path / "missing") == []


def test_export_refuses_a_non_empty_folder_and_counts_missing_images(tmp_path):
    from edge_agent.records import VerdictRecord  # noqa: F401  (the store below writes the agent's records)
    from review.auth import User
    from tests.review.factory import record

    store = ReviewStore(f"sqlite:///{tmp_path / 'x.db'}")
    vid, _ = store.store.record(record("a", "gone.png", NOW, 20.0, image_path=str(tmp_path / "gone.png")), [])
    store.add_feedback(User("r", "reviewer"), vid, "false_alarm")
    report = export_dataset(store, tmp_path / "out")
    assert report.total == 0 and report.missing_images == [f"verdict {vid}: {tmp_path / 'gone.png'}"]
    assert (tmp_path / "out" / "labels.csv").read_text().count("\n") == 1  # the header only
    with pytest.raises(FileExistsError):
        export_dataset(store, tmp_path / "out")
    store.close()

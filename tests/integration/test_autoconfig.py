"""The settings search on real bottle images: normal images only, the YAML wins, its figures are recorded."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from training.config import TrainConfig
from training.data import Sample, load_dataset
from training.report import markdown_table, read_run


@pytest.fixture(scope="module")
def search_result(datasets_root):
    from training.autoconfig import search_patchcore

    cfg = TrainConfig.model_validate(
        {
            "dataset": {"name": "bottle", "layout": "mvtec", "root": "mvtec_ad/bottle"},
            "patchcore": {"backbone": "efficientnet_lite0", "size": 224, "bank_rotations": [], "blur_sigma": 4.0},
        }
    )
    splits = load_dataset(cfg.dataset)
    # the search must not read a single test image: point every test sample at a file that does not exist
    missing = [dataclasses.replace(s, path=Path("/nonexistent") / s.path.name) for s in splits.test]
    blind = dataclasses.replace(splits, test=[Sample(Path("/nonexistent/x.png"), 1, "broken_large"), *missing])
    return search_patchcore(cfg, blind, budget_seconds=600)


def test_search_keeps_what_the_yaml_sets_and_chooses_the_rest(search_result):
    chosen, report = search_result
    assert chosen.size == 224 and chosen.bank_rotations == [] and chosen.blur_sigma == 4.0
    assert report["fixed_by_config"] == ["backbone", "bank_rotations", "blur_sigma", "size"]
    assert chosen.coreset_ratio in (0.01, 0.02) and chosen.score_top_fraction in (None, 0.01)
    assert chosen.whiten in (False, True) and report["chosen"]["whiten"] == chosen.whiten
    assert report["chosen"]["coreset_ratio"] == chosen.coreset_ratio
    # every candidate: 2 feature spaces x 2 coreset ratios x 2 score rules, on held-out normals and synthetic defects
    assert len(report["candidates"]) == 8
    assert {c["whiten"] for c in report["candidates"]} == {False, True}
    assert report["held_out_normals"] == 31 and report["synthetic_defects"] == 93
    # last, the choice without neighbourhood averaging against itself with it, on a set made at its size
    assert {c["pool"] for c in report["context_candidates"]} == {1, 3}
    assert chosen.pool in (1, 3) and report["chosen"]["pool"] == chosen.pool
    figures = report["chosen_figures"]
    assert figures["synthetic_image_auroc"] > 0.9 and figures["synthetic_pixel_auroc"] > 0.9
    json.dumps(report)  # the report is written as JSON into the run folder


def test_training_run_records_the_choice_and_the_threshold(bottle_run):
    """The session's bottle run (tests/conftest.py) lets the search choose smoothing and score rule."""
    metrics = read_run(bottle_run)["patchcore"]
    assert metrics["settings"]["chosen_by"] == "search"
    assert metrics["settings"]["size"] == 224 and metrics["settings"]["bank_rotations"] == []
    assert metrics["settings"]["backbone"] == "efficientnet_lite0"
    assert metrics["settings"]["whiten"] is True  # the YAML's (tests/conftest.py)
    assert (bottle_run / "patchcore" / "autoconfig.json").is_file()
    calibration = json.loads((bottle_run / "patchcore" / "calibration.json").read_text())
    assert calibration["method"] == "false_alarm_rate" and calibration["false_alarm_rate"] == 0.01
    assert calibration["n_normal"] == 31 + 178  # validation + leave-one-out scores of the training images
    assert calibration["note"] is None  # 209 normal scores resolve a 1 % rate
    assert 0 < metrics["expected_false_alarm_rate"] <= 0.01
    assert 0.5 <= metrics["synthetic_recall"] <= 1.0
    table = markdown_table("bottle", read_run(bottle_run))
    assert "(search)" in table and "synthetic recall" in table

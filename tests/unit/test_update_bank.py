"""The memory-bank extension of an update: greedy k-center continued from the bank until new rows are covered."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from training.update import Feedback, UpdateError, check_gate, extend_bank


def test_new_rows_end_within_the_radius_and_covered_ones_add_nothing():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(200, 16)).astype(np.float32)
    near = bank[:50] + 0.01  # already covered
    extended, added = extend_bank(bank, near, radius=0.5)
    assert added == 0 and extended.shape == bank.shape
    far = rng.normal(loc=6.0, size=(300, 16)).astype(np.float32)  # a new appearance
    extended, added = extend_bank(bank, far, radius=3.0)
    assert 0 < added < len(far)  # a cover, not every row
    assert np.array_equal(extended[: len(bank)], bank)  # the old rows stay first and unchanged
    gaps = np.linalg.norm(far[:, None, :] - extended[None, :, :], axis=2).min(axis=1)
    assert gaps.max() <= 3.0


def test_feedback_folder_is_read_by_label(tmp_path):
    with pytest.raises(UpdateError, match="not a review export"):
        Feedback.read(tmp_path)
    with (tmp_path / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "label", "defect_type"])
        writer.writeheader()
        writer.writerow({"file": "good/a.png", "label": "false_alarm", "defect_type": ""})
        writer.writerow({"file": "crack/b.png", "label": "defect", "defect_type": "crack"})
        writer.writerow({"file": "good/c.png", "label": "unsure", "defect_type": ""})
    feedback = Feedback.read(tmp_path)
    assert feedback.false_alarms == [tmp_path / "good/a.png"]
    assert feedback.defects == {"crack": [tmp_path / "crack/b.png"]}


def test_the_gate_refuses_a_drop_beyond_it():
    check_gate({"test_auroc_before": 0.99, "test_auroc_after": 0.985}, 0.01)
    with pytest.raises(UpdateError, match=r"update refused: test image AUROC 0.9700, was 0.9900 \(drop 0.0200"):
        check_gate({"test_auroc_before": 0.99, "test_auroc_after": 0.97}, 0.01)

"""End to end on the real bottle images: train, calibrate, evaluate, write model folders, print the table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.cli import main
from training.report import read_run


def test_patchcore_meets_the_bottle_bar(bottle_run):
    metrics = read_run(bottle_run)["patchcore"]
    assert metrics["image_auroc"] >= 0.99
    assert metrics["pixel_auroc"] >= 0.97
    assert 0.0 <= metrics["pro"] <= 1.0
    assert metrics["bank_size"] == pytest.approx(0.01 * 178 * 28 * 28, abs=2)
    assert sum(sum(row) for row in metrics["confusion_matrix"]) == 83


def test_model_folders_carry_preprocessing_calibration_and_hashes(bottle_run):
    for name, model_file in (("patchcore", "backbone.keras"), ("autoencoder", "model.keras")):
        folder = bottle_run / name
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["kind"] == name and meta["data"]["validation_images"] == 31
        assert set(meta["files"]) >= {model_file, "preprocess.json", "calibration.json", "metrics.json"}
        calibration = json.loads((folder / "calibration.json").read_text())
        assert calibration["threshold"] > calibration["center"]
        assert calibration["n_validation"] == 31
        assert len(list((folder / "heatmaps").glob("*.png"))) == 4
    assert np.load(bottle_run / "patchcore" / "memory_bank.npy").dtype == np.float32
    assert any((bottle_run / "autoencoder" / "logs").rglob("*tfevents*"))


def test_autoencoder_reports_every_metric(bottle_run):
    metrics = read_run(bottle_run)["autoencoder"]
    for key in ("image_auroc", "image_f1", "pixel_auroc", "pro", "iou", "dice", "train_seconds", "peak_rss_mb"):
        assert isinstance(metrics[key], float), key
    assert metrics["epochs_run"] == 2


def test_evaluate_prints_one_table(bottle_run, bottle_config, capsys):
    assert main(["evaluate", "--config", str(bottle_config), "--out", str(bottle_run)]) == 0
    out = capsys.readouterr().out
    assert "| patchcore |" in out and "| autoencoder |" in out and "PRO@0.3" in out

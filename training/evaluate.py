"""Evaluation of anomaly scorers: image-level and pixel-level metrics at the fitted thresholds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_agent.heatmap import calibrated_heatmap
from edge_agent.scoring import Calibration
from training import metrics
from training.data import Sample


def evaluate_anomaly(
    samples: Sequence[Sample],
    scores: np.ndarray,
    maps: np.ndarray | None,
    masks: np.ndarray | None,
    calibration: Calibration,
) -> dict[str, Any]:
    """Image AUROC, F1/precision/recall/confusion at the threshold; pixel AUROC, IoU, Dice, PRO with masks."""
    labels = np.array([s.label for s in samples])
    predictions = (scores >= calibration.threshold).astype(int)
    report = metrics.binary_report(labels, predictions)
    oracle_threshold, oracle_f1 = metrics.threshold_for_f1(labels, scores)
    result: dict[str, Any] = {
        "image_auroc": metrics.roc_auc(labels, scores),
        "image_f1": report["f1"],
        "precision": report["precision"],
        "recall": report["recall"],
        "accuracy": report["accuracy"],
        "confusion_matrix": [[report["tn"], report["fp"]], [report["fn"], report["tp"]]],
        "best_f1_oracle": oracle_f1,
        "threshold": calibration.threshold,
        "oracle_threshold": oracle_threshold,
        "test_images": len(samples),
        "per_type_recall": _per_type_recall(samples, predictions),
    }
    if maps is not None and masks is not None and masks.any():
        iou, dice = metrics.iou_dice(masks, maps, calibration.pixel_threshold)
        result.update(
            pixel_auroc=metrics.pixel_auroc(masks, maps),
            pro=metrics.pro_auc(masks, maps, fpr_limit=0.3),
            iou=iou,
            dice=dice,
            pixel_threshold=calibration.pixel_threshold,
        )
    return result


def _per_type_recall(samples: Sequence[Sample], predictions: np.ndarray) -> dict[str, float]:
    """Share of each type flagged anomalous (for ``good`` this is the false-positive rate)."""
    out: dict[str, float] = {}
    for kind in sorted({s.defect_type for s in samples}):
        idx = [i for i, s in enumerate(samples) if s.defect_type == kind]
        out[kind] = float(predictions[idx].mean())
    return out


def save_heatmaps(
    folder: Path,
    samples: Sequence[Sample],
    images: np.ndarray,
    maps: np.ndarray,
    masks: np.ndarray | None,
    calibration: Calibration,
    count: int,
    seed: int = 0,
) -> list[Path]:
    """Write heatmap overlays (map, ground-truth outline in green, thresholded region in white) for a sample."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    defects = [i for i, s in enumerate(samples) if s.label == 1]
    normals = [i for i, s in enumerate(samples) if s.label == 0]
    n_defect = min(len(defects), max(1, count * 3 // 4)) if count else 0
    chosen = list(rng.permutation(defects)[:n_defect]) + list(rng.permutation(normals)[: count - n_defect])
    written = []
    for i in chosen:
        truth = masks[i] if masks is not None else None
        overlay = calibrated_heatmap(images[i], maps[i], calibration, truth)
        sample = samples[i]
        path = folder / f"{sample.defect_type}_{sample.path.stem}.png"
        cv2.imwrite(str(path), overlay)
        written.append(path)
    return written

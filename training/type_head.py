"""Train the anomaly-guided type head (:mod:`edge_agent.type_head`) on a PatchCore run's features.

The head reads the scorer's own graph: PatchCore's taps plus one deeper tap (:data:`DEEP_TAP`), all ImageNet
weights, so it adds no graph of its own and only a small float32 regression to the bundle. Like the classifier it
learns from the test split's labelled defects (the only ones a data set has) and is evaluated by stratified
K-fold cross-validation, repeated :data:`REPEATS` times with other seeds (the figures are the means). Two
figures: macro F1 over the defect types alone, and macro F1 of what the line sees, ``good`` when the scorer's
score is below its threshold, else the head's type.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.preprocess import PreprocessSpec, normalise
from edge_agent.scoring import NearestNeighbourIndex, distance_map, image_score, patch_embedding
from edge_agent.type_head import TypeHead, type_features
from training.artifacts import finalise_model_folder, read_calibration, read_json
from training.data import NORMAL, DatasetSplits, load_images
from training.metrics import confusion_matrix, macro_f1, per_class_f1
from training.models.patchcore import load_bank

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

#: The deeper tap the head pools (EfficientNet-Lite stage 7, 320 channels for Lite0).
DEEP_TAP = "stride32"
#: L2 penalty of the logistic regression (sklearn's default C = 1 in this loss scaling).
L2 = 1.0
MIN_PER_TYPE = 2
#: Repeats of the stratified K-fold split whose F1 figures are averaged: with a few dozen labelled defects one
#: split's macro F1 moves by a few hundredths with the seed (bottle: 0.905 to 0.952 over five seeds).
REPEATS = 5


def fit_logistic(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float = L2, steps: int = 500) -> TypeHead:
    """Multinomial logistic regression on standardised ``x`` by full-batch gradient descent (class names unset)."""
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / std
    weights = np.zeros((x.shape[1], n_classes))
    bias = np.zeros(n_classes)
    onehot = np.eye(n_classes)[y]
    rate = 0.5
    for _ in range(steps):
        logits = z @ weights + bias
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        weights -= rate * (z.T @ (p - onehot) + l2 * weights) / len(z)
        bias -= rate * (p - onehot).mean(axis=0)
    f32 = np.float32
    return TypeHead([], mean.astype(f32), std.astype(f32), weights.astype(f32), bias.astype(f32))


def build_feature_model(patchcore_dir: Path) -> tuple[keras.Model, PreprocessSpec]:
    """The scorer's backbone with :data:`DEEP_TAP` added as its last output, and its pre-processing."""
    from training.backbones import get_backbone

    params = read_calibration(patchcore_dir)
    settings = params["settings"]
    taps = (*params["taps"], DEEP_TAP)
    model, _ = get_backbone(settings["backbone"], settings["size"], "imagenet", taps)
    return model, PreprocessSpec.from_dict(read_json(patchcore_dir / "preprocess.json"))


def image_evidence(
    outputs: list[np.ndarray], index: NearestNeighbourIndex, params: dict[str, Any], size: int
) -> tuple[np.ndarray, float]:
    """Type features and image score of one image from its graph outputs (patch taps first, the deep tap last)."""
    *taps, deep = outputs
    patches = patch_embedding(taps, int(params["pool"]))
    distances = index.distances(patches)
    grid = taps[0].shape[:2]
    score = image_score(distance_map(distances, grid, size, params["blur_sigma"]), params["score_top_fraction"])
    return type_features(patches, distances, grid, deep), score


def float_evidence(
    model: keras.Model, images: np.ndarray, spec: PreprocessSpec, patchcore_dir: Path
) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """Type features, image scores and the scorer's threshold of prepared images, through the float model and the
    PatchCore run's float bank."""
    params = read_calibration(patchcore_dir)
    bank, whitening = load_bank(patchcore_dir)
    index = NearestNeighbourIndex(bank, threads=2, whitening=whitening)
    features, scores = [], []
    for start in range(0, len(images), 8):
        outputs = [np.asarray(o) for o in model(normalise(images[start : start + 8], spec), training=False)]
        for j in range(len(outputs[0])):
            f, s = image_evidence([o[j] for o in outputs], index, params, spec.size)
            features.append(f)
            scores.append(s)
    return np.stack(features), np.array(scores), np.float32(params["threshold"])


def _out_of_fold_types(features: np.ndarray, types: np.ndarray, n_types: int, folds: int, seed: int) -> np.ndarray:
    """Out-of-fold type of each defective image (``types >= 0``, in order) from one stratified K-fold split."""
    from training.train_classifier import stratified_folds

    defect = np.flatnonzero(types >= 0)
    predicted = np.full(len(defect), -1)
    for held in stratified_folds(types[defect], folds, seed):
        fit_idx = np.setdiff1d(np.arange(len(defect)), held)
        head = fit_logistic(features[defect[fit_idx]], types[defect[fit_idx]], n_types)
        predicted[held] = head.probabilities(features[defect[held]]).argmax(axis=1)
    return predicted


def cross_validate(
    features: np.ndarray,
    types: np.ndarray,
    n_types: int,
    anomalous: np.ndarray,
    folds: int,
    seed: int = 0,
    repeats: int = REPEATS,
) -> dict[str, Any]:
    """Out-of-fold figures: ``types`` is -1 for good images; ``anomalous`` is the scorer's verdict per image.

    The K-fold split is repeated ``repeats`` times with seeds ``seed, seed + 1, ...`` and the F1 figures are the
    means over the repeats (each repeat's figure is kept); the confusion matrix and accuracy are the first repeat's.
    A good image the scorer flags gets its type from a head fitted on all defects, the same in every repeat.
    """
    defect = types >= 0
    predicted = np.full(len(types), -1)
    if not defect.all():
        head = fit_logistic(features[defect], types[defect], n_types)
        predicted[~defect] = head.probabilities(features[~defect]).argmax(axis=1)
    line_true = types + 1  # 0 = good
    n = n_types + 1
    line_preds, types_f1 = [], []
    for r in range(repeats):
        predicted[defect] = _out_of_fold_types(features, types, n_types, folds, seed + r)
        line_preds.append(np.where(anomalous, predicted + 1, 0))
        types_f1.append(float(macro_f1(types[defect], predicted[defect], n_types)))
    line_f1 = [float(macro_f1(line_true, pred, n)) for pred in line_preds]
    return {
        "folds": folds,
        "repeats": repeats,
        "types_macro_f1": float(np.mean(types_f1)),
        "macro_f1": float(np.mean(line_f1)),
        "macro_f1_per_repeat": line_f1,
        "types_macro_f1_per_repeat": types_f1,
        "per_class_f1": np.mean([per_class_f1(line_true, pred, n) for pred in line_preds], axis=0).tolist(),
        "confusion_matrix": confusion_matrix(line_true, line_preds[0], n).tolist(),
        "accuracy": float((line_true == line_preds[0]).mean()),
        "evaluation": (
            f"stratified {folds}-fold on the test split's defects, repeated {repeats} times (mean); "
            "good = below the scorer's threshold; confusion matrix of the first repeat"
        ),
    }


def train_type_head(splits: DatasetSplits, patchcore_dir: Path, out_dir: Path, folds: int = 5) -> dict[str, Any] | None:
    """Cross-validate and fit the type head on a PatchCore run; writes ``out_dir``; None with under two types."""
    types_present = splits.defect_types
    defects = [s for s in splits.test if s.label == 1]
    counts = [sum(s.defect_type == t for s in defects) for t in types_present]
    if len(types_present) < 2 or min(counts) < MIN_PER_TYPE:
        log.info("type head skipped: %d defect type(s) with %s images", len(types_present), counts)
        return None
    t0 = time.perf_counter()
    model, spec = build_feature_model(patchcore_dir)
    images, kept = load_images(splits.test, spec, splits.skipped)
    features, scores, threshold = float_evidence(model, images, spec, patchcore_dir)
    types = np.array([types_present.index(s.defect_type) if s.label == 1 else -1 for s in kept])
    result = cross_validate(features, types, len(types_present), scores >= threshold, folds)
    head = fit_logistic(features[types >= 0], types[types >= 0], len(types_present))
    out_dir.mkdir(parents=True, exist_ok=True)
    TypeHead(types_present, head.mean, head.std, head.weights, head.bias).save(out_dir / "type_head.npz")
    model.save(out_dir / "model.keras")
    result.update(model="type-head", class_names=[NORMAL, *types_present], train_seconds=time.perf_counter() - t0)
    finalise_model_folder(
        out_dir,
        kind="type_head",
        name=f"{splits.name}-type-head",
        preprocess=spec,
        calibration={
            "class_names": types_present,
            "deep_tap": DEEP_TAP,
            "head": "type_head.npz",
            "scorer": patchcore_dir.name,
        },
        metrics=result,
        splits=splits,
    )
    log.info("type head: macro F1 %.3f (types alone %.3f)", result["macro_f1"], result["types_macro_f1"])
    return result

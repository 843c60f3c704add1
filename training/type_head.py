"""Train the anomaly-guided type head (:mod:`edge_agent.type_head`) on a PatchCore run's features.

The head reads the scorer's own graph: PatchCore's taps plus one deeper map, all ImageNet weights, so it adds no
graph of its own and only a small float32 regression to the bundle. The deeper map is chosen per part by the
head's own cross-validated macro F1 (:data:`DEEP_CHOICES`): stage 7 (:data:`DEEP_TAP`, a type tail graph on the edge)
or the scorer's last patch tap itself (no tail), the cheaper one unless the other wins by more than
:data:`DEEP_TIE`. Like the classifier it
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

#: The deeper tap the head may pool (EfficientNet-Lite stage 7, 320 channels for Lite0; a tail graph on the edge).
DEEP_TAP = "stride32"
#: The other choice: the head pools the scorer's last patch tap as its deeper map (nothing more to run).
LAST_PATCH_TAP = "last_patch_tap"
#: Deeper maps the head chooses from, cheapest first. ``make bench-type-tail`` (line macro F1, 5-fold x 5):
#: bottle 0.931 with stage 7 against 0.871 with the last patch tap; tire 0.318 against 0.402.
DEEP_CHOICES = (LAST_PATCH_TAP, DEEP_TAP)
#: A costlier deeper map is chosen only when its line macro F1 beats a cheaper one's by more than this.
DEEP_TIE = 0.01
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


def build_feature_model(patchcore_dir: Path, deep_tap: str = DEEP_TAP) -> tuple[keras.Model, PreprocessSpec]:
    """The scorer's backbone with ``deep_tap`` added as its last output (the patch taps alone for
    :data:`LAST_PATCH_TAP`), and its pre-processing."""
    from training.backbones import get_backbone

    params = read_calibration(patchcore_dir)
    settings = params["settings"]
    taps = tuple(params["taps"]) if deep_tap == LAST_PATCH_TAP else (*params["taps"], deep_tap)
    model, _ = get_backbone(settings["backbone"], settings["size"], "imagenet", taps)
    return model, PreprocessSpec.from_dict(read_json(patchcore_dir / "preprocess.json"))


def image_evidence(
    outputs: list[np.ndarray], index: NearestNeighbourIndex, params: dict[str, Any], size: int
) -> tuple[dict[str, np.ndarray], float]:
    """Type features of one image for each deeper map its graph outputs give (patch taps first; the deep tap, when
    there is one, last), and its image score."""
    taps, deeper = outputs[: len(params["taps"])], outputs[len(params["taps"]) :]
    patches = patch_embedding(taps, int(params["pool"]))
    distances = index.distances(patches)
    grid = taps[0].shape[:2]
    score = image_score(distance_map(distances, grid, size, params["blur_sigma"]), params["score_top_fraction"])
    features = {LAST_PATCH_TAP: type_features(patches, distances, grid, taps[-1])}
    if deeper:
        features[DEEP_TAP] = type_features(patches, distances, grid, deeper[0])
    return features, score


def float_evidence(
    model: keras.Model, images: np.ndarray, spec: PreprocessSpec, patchcore_dir: Path
) -> tuple[dict[str, np.ndarray], np.ndarray, np.float32]:
    """Type features (for each deeper map the model gives, see :func:`image_evidence`), image scores and the
    scorer's threshold of prepared images, through the float model and the PatchCore run's float bank."""
    params = read_calibration(patchcore_dir)
    bank, whitening = load_bank(patchcore_dir)
    index = NearestNeighbourIndex(bank, threads=2, whitening=whitening)
    features: dict[str, list[np.ndarray]] = {}
    scores = []
    for start in range(0, len(images), 8):
        outputs = [np.asarray(o) for o in model(normalise(images[start : start + 8], spec), training=False)]
        for j in range(len(outputs[0])):
            f, s = image_evidence([o[j] for o in outputs], index, params, spec.size)
            for choice, vector in f.items():
                features.setdefault(choice, []).append(vector)
            scores.append(s)
    stacked = {choice: np.stack(v) for choice, v in features.items()}
    return stacked, np.array(scores), np.float32(params["threshold"])


def choose_deep_tap(line_f1: dict[str, float]) -> str:
    """The cheapest deeper map (order of :data:`DEEP_CHOICES`) whose line macro F1 is within :data:`DEEP_TIE` of
    the best."""
    best = max(line_f1.values())
    return next(c for c in DEEP_CHOICES if c in line_f1 and line_f1[c] >= best - DEEP_TIE)


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


def train_type_head(
    splits: DatasetSplits,
    patchcore_dir: Path,
    out_dir: Path,
    folds: int = 5,
    deep_taps: tuple[str, ...] = DEEP_CHOICES,
) -> dict[str, Any] | None:
    """Cross-validate the type head on a PatchCore run with each deeper map of ``deep_taps``, keep the one
    :func:`choose_deep_tap` picks and fit it on every defect; writes ``out_dir``; None with under two types."""
    types_present = splits.defect_types
    defects = [s for s in splits.test if s.label == 1]
    counts = [sum(s.defect_type == t for s in defects) for t in types_present]
    if len(types_present) < 2 or min(counts) < MIN_PER_TYPE:
        log.info("type head skipped: %d defect type(s) with %s images", len(types_present), counts)
        return None
    t0 = time.perf_counter()
    model, spec = build_feature_model(patchcore_dir, DEEP_TAP if DEEP_TAP in deep_taps else LAST_PATCH_TAP)
    images, kept = load_images(splits.test, spec, splits.skipped)
    by_choice, scores, threshold = float_evidence(model, images, spec, patchcore_dir)
    types = np.array([types_present.index(s.defect_type) if s.label == 1 else -1 for s in kept])
    anomalous = scores >= threshold
    results = {c: cross_validate(by_choice[c], types, len(types_present), anomalous, folds) for c in deep_taps}
    choice = choose_deep_tap({c: r["macro_f1"] for c, r in results.items()})
    result, features = results[choice], by_choice[choice]
    head = fit_logistic(features[types >= 0], types[types >= 0], len(types_present))
    out_dir.mkdir(parents=True, exist_ok=True)
    TypeHead(types_present, head.mean, head.std, head.weights, head.bias).save(out_dir / "type_head.npz")
    if choice != DEEP_TAP and DEEP_TAP in deep_taps:
        model, _ = build_feature_model(patchcore_dir, choice)  # the graph the head reads: no deeper output
    model.save(out_dir / "model.keras")
    result.update(
        model="type-head",
        class_names=[NORMAL, *types_present],
        deep_tap=choice,
        deep_tap_candidates={
            c: {"macro_f1": r["macro_f1"], "types_macro_f1": r["types_macro_f1"]} for c, r in results.items()
        },
        train_seconds=time.perf_counter() - t0,
    )
    finalise_model_folder(
        out_dir,
        kind="type_head",
        name=f"{splits.name}-type-head",
        preprocess=spec,
        calibration={
            "class_names": types_present,
            "deep_tap": choice,
            "head": "type_head.npz",
            "scorer": patchcore_dir.name,
        },
        metrics=result,
        splits=splits,
    )
    log.info(
        "type head: deeper map %s, macro F1 %.3f (types alone %.3f); candidates %s",
        choice,
        result["macro_f1"],
        result["types_macro_f1"],
        {c: round(r["macro_f1"], 3) for c, r in results.items()},
    )
    return result

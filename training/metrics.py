"""Evaluation metrics in plain numpy (+ OpenCV for connected regions): ROC/AUROC, F1, IoU/Dice and PRO.

Conventions: labels are 0/1 (ints or bools), 1 = anomalous / positive; a sample is predicted positive when its
score is ``>=`` the threshold. Nothing here emits warnings or returns NaN for undefined ratios: those are 0.0
unless a function documents otherwise.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import ArrayLike


def _ratio(num: float, den: float) -> float:
    """``num / den``, or 0.0 when ``den`` is 0."""
    return float(num) / float(den) if den else 0.0


def _labels_scores(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate and flatten binary labels and float scores of equal length."""
    y = np.asarray(labels).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {s.size}")
    if y.size == 0:
        raise ValueError("labels and scores are empty")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1 or bool")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return y.astype(bool), s


def _require_both_classes(y: np.ndarray) -> None:
    """Raise ValueError unless ``y`` holds both positives and negatives."""
    if y.all() or not y.any():
        raise ValueError(f"only one class present in labels (all {int(y[0])}): ROC AUC is undefined")


def _cumulative_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tp, fp, thresholds) at every distinct score, thresholds descending, predicting ``score >= threshold``."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_group = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    tp = np.cumsum(y_sorted)[last_of_group]
    fp = np.cumsum(~y_sorted)[last_of_group]
    return tp, fp, s_sorted[last_of_group]


def _average_ranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks of ``s`` with tied values sharing the average of their ranks."""
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    new_group = np.r_[True, s_sorted[1:] != s_sorted[:-1]]
    starts = np.flatnonzero(new_group)
    ends = np.r_[starts[1:], s.size]
    mean_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = mean_rank[np.cumsum(new_group) - 1]
    return ranks


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve by the Mann-Whitney rank formula; ties count 1/2. Needs both classes."""
    y, s = _labels_scores(labels, scores)
    _require_both_classes(y)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    rank_sum = _average_ranks(s)[y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score, thresholds descending; first point is (0, 0) at +inf.

    No intermediate points are dropped (unlike sklearn's ``drop_intermediate``). Needs both classes.
    """
    y, s = _labels_scores(labels, scores)
    _require_both_classes(y)
    tp, fp, thresholds = _cumulative_counts(y, s)
    fpr = np.r_[0.0, fp / fp[-1]]
    tpr = np.r_[0.0, tp / tp[-1]]
    return fpr, tpr, np.r_[np.inf, thresholds]


def binary_report(labels: ArrayLike, predictions: ArrayLike) -> dict[str, int | float]:
    """Counts tp/fp/tn/fn (ints) and precision, recall, f1, accuracy (floats; 0.0 where undefined)."""
    y, p = _labels_scores(labels, predictions)
    if not np.isin(p, (0, 1)).all():
        raise ValueError("predictions must be 0/1 or bool")
    pred = p.astype(bool)
    tp = int((y & pred).sum())
    fp = int((~y & pred).sum())
    fn = int((y & ~pred).sum())
    tn = int((~y & ~pred).sum())
    return {
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": _ratio(tp + tn, y.size),
    }


def threshold_for_f1(labels: ArrayLike, scores: ArrayLike) -> tuple[float, float]:
    """(threshold, f1) maximising F1 of ``score >= threshold`` on this data (an oracle figure, not a fit).

    The threshold is one of the scores; among equal F1 values the highest threshold wins.
    """
    y, s = _labels_scores(labels, scores)
    tp, fp, thresholds = _cumulative_counts(y, s)
    fn = int(y.sum()) - tp
    den = 2 * tp + fp + fn
    f1 = np.divide(2.0 * tp, den, out=np.zeros(tp.shape, dtype=np.float64), where=den > 0)
    best = int(np.argmax(f1))
    return float(thresholds[best]), float(f1[best])


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> np.ndarray:
    """Counts as an int64 (n_classes, n_classes) matrix indexed [true class, predicted class]."""
    t = np.asarray(y_true).ravel().astype(np.int64)
    p = np.asarray(y_pred).ravel().astype(np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.size} vs {p.size}")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n_classes):
        raise ValueError(f"class indices must lie in [0, {n_classes})")
    counts = np.bincount(t * n_classes + p, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes).astype(np.int64)


def per_class_f1(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> np.ndarray:
    """One-vs-rest F1 of each class (float64, length n_classes); 0.0 for a class absent from both inputs."""
    cm = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(cm).astype(np.float64)
    den = cm.sum(axis=0) + cm.sum(axis=1)  # = 2tp + fp + fn
    return np.divide(2.0 * tp, den, out=np.zeros(n_classes, dtype=np.float64), where=den > 0)


def macro_f1(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> float:
    """Unweighted mean F1 over the classes present in y_true or y_pred.

    Like sklearn's ``f1_score(average="macro")`` with ``labels=None``: classes that appear in neither input are
    left out of the mean; a class predicted but never true (or true but never predicted) counts with F1 = 0.
    """
    cm = confusion_matrix(y_true, y_pred, n_classes)
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    if not present.any():
        return 0.0
    return float(per_class_f1(y_true, y_pred, n_classes)[present].mean())


def _masks_maps(masks: ArrayLike, maps: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate ground-truth masks (bool) and anomaly maps (float) of one shape (N, H, W)."""
    m = np.asarray(masks).astype(bool)
    a = np.asarray(maps, dtype=np.float64)
    if m.shape != a.shape:
        raise ValueError(f"masks and maps differ in shape: {m.shape} vs {a.shape}")
    if m.ndim == 2:
        m, a = m[None], a[None]
    if m.ndim != 3:
        raise ValueError(f"masks and maps must be (N, H, W), got {m.shape}")
    if np.isnan(a).any():
        raise ValueError("maps contain NaN")
    return m, a


def pixel_auroc(masks: ArrayLike, maps: ArrayLike, max_pixels: int | None = 2_000_000, seed: int = 0) -> float:
    """ROC AUC over all pixels of all images (mask True = anomalous).

    With more than ``max_pixels`` pixels, a uniform random subsample of ``max_pixels`` pixels (without
    replacement, ``np.random.default_rng(seed)``) is scored instead, so the result is reproducible per seed.
    ``max_pixels=None`` uses every pixel.
    """
    m, a = _masks_maps(masks, maps)
    y, s = m.ravel(), a.ravel()
    if max_pixels is not None and y.size > max_pixels:
        idx = np.random.default_rng(seed).choice(y.size, size=max_pixels, replace=False)
        y, s = y[idx], s[idx]
    return roc_auc(y, s)


def iou_dice(masks: ArrayLike, maps: ArrayLike, threshold: float) -> tuple[float, float]:
    """Dataset-level (IoU, Dice) of ``maps >= threshold`` against the masks, pixels summed over all images.

    When prediction and ground truth are both empty (empty union) both are defined as 1.0 (perfect).
    """
    m, a = _masks_maps(masks, maps)
    pred = a >= threshold
    inter = int((pred & m).sum())
    union = int((pred | m).sum())
    if union == 0:
        return 1.0, 1.0
    return inter / union, 2.0 * inter / (int(pred.sum()) + int(m.sum()))


def _region_labels(m: np.ndarray) -> tuple[np.ndarray, int]:
    """Global ids (0 = background, 1..R) of the 8-connected ground-truth regions of every image, and R."""
    ids = np.zeros(m.shape, dtype=np.int32)
    total = 0
    for i, mask in enumerate(m):
        if not mask.any():
            continue
        count, lab = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        ids[i] = np.where(lab > 0, lab + total, 0)
        total += count - 1
    return ids, total


def pro_curve(
    masks: ArrayLike, maps: ArrayLike, fpr_limit: float = 0.3, num_thresholds: int = 200
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, pro, thresholds) of the Per-Region Overlap curve, thresholds descending, starting at (0, 0) at +inf.

    PRO = mean over all 8-connected ground-truth regions (of all images) of the share of the region's pixels
    with ``map >= threshold``; FPR = share of normal pixels (mask False, all images) with ``map >= threshold``.
    Thresholds: ``num_thresholds`` evenly spaced from min to max of the maps, plus the normal-pixel scores at
    which FPR is ``num_thresholds`` evenly spaced levels in [0, fpr_limit] (fine resolution where PRO-AUC
    integrates). Every region pixel is binned once, so the cost is O(pixels * log(thresholds)).
    """
    m, a = _masks_maps(masks, maps)
    ids, n_regions = _region_labels(m)
    if n_regions == 0:
        raise ValueError("no anomalous region in masks: PRO is undefined")
    normal = np.sort(a[~m])
    if normal.size == 0:
        raise ValueError("no normal pixel in masks: the FPR of PRO is undefined")
    levels = np.linspace(0.0, fpr_limit, num_thresholds)
    quantile_idx = np.clip(np.ceil(normal.size * (1.0 - levels)).astype(np.int64), 0, normal.size - 1)
    thresholds = np.unique(np.r_[np.linspace(a.min(), a.max(), num_thresholds), normal[quantile_idx]])
    n_thr = thresholds.size
    # fpr at each ascending threshold: normal scores >= t.
    fpr = (normal.size - np.searchsorted(normal, thresholds, side="left")) / normal.size
    # Per region: histogram of "number of thresholds <= score" (0..n_thr); a pixel is >= thresholds[k] iff bin > k.
    region = ids[m].astype(np.int64) - 1
    bins = np.searchsorted(thresholds, a[m], side="right")
    hist = np.bincount(region * (n_thr + 1) + bins, minlength=n_regions * (n_thr + 1)).reshape(n_regions, -1)
    at_least = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]  # at_least[:, b] = pixels with bin >= b
    sizes = at_least[:, 0].astype(np.float64)
    pro = (at_least[:, 1:] / sizes[:, None]).mean(axis=0)
    return np.r_[0.0, fpr[::-1]], np.r_[0.0, pro[::-1]], np.r_[np.inf, thresholds[::-1]]


def pro_auc(masks: ArrayLike, maps: ArrayLike, fpr_limit: float = 0.3, num_thresholds: int = 200) -> float:
    """Normalised area under the PRO curve for FPR in [0, fpr_limit] (MVTec AD protocol, Bergmann et al.).

    See ``pro_curve``; PRO is linearly interpolated at exactly ``fpr_limit``, the area is taken with the
    trapezoid rule and divided by ``fpr_limit``, so a perfect map scores 1.0 and a constant map fpr_limit / 2.
    Raises ValueError when the masks hold no anomalous region.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    fpr, pro, _ = pro_curve(masks, maps, fpr_limit, num_thresholds)
    end = int(np.searchsorted(fpr, fpr_limit, side="right"))  # fpr is non-decreasing; fpr[end] > fpr_limit
    x, y = fpr[:end], pro[:end]
    if end < fpr.size:
        x0, x1, y0, y1 = fpr[end - 1], fpr[end], pro[end - 1], pro[end]
        x = np.r_[x, fpr_limit]
        y = np.r_[y, y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)]
    area = float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))
    return area / fpr_limit

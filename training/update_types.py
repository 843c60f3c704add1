"""Defect types from confirmed feedback: the type head re-fitted with the reviewed defects added.

The type head (:mod:`edge_agent.type_head`) is a logistic regression over features the scorer's int8 graph pools
where the anomaly map is high. The update computes those features through the bundle's own graph, against the
updated memory bank, for (a) the labelled defects of the data set's test split (what export fitted the head on)
and (b) the frames reviewers confirmed with a type. A type first seen in feedback becomes a new class once it has
:data:`MIN_NEW_TYPE` frames; the head is re-fitted when at least ``min_defects`` confirmed frames can be used.

Figures: the old head's accuracy on the confirmed frames; the new head's leave-one-out accuracy on them (each
frame predicted by a head fitted without it); and the macro F1 of the test split's own types on its defects by
stratified K-fold, fitted without and with the feedback frames on the same folds. The new head ships only when
that macro F1 drops by no more than ``max_drop``; otherwise the old head stays and the report says why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent.type_head import TypeHead
from training.metrics import per_class_f1
from training.type_head import fit_logistic

log = logging.getLogger(__name__)

#: Frames a type first seen in feedback needs before it becomes a class of the head.
MIN_NEW_TYPE = 3


@dataclass
class TypeRefit:
    """The re-fitted head (None: keep the old one) and what the update report says about it."""

    head: TypeHead | None
    report: dict[str, Any] = field(default_factory=dict)


def refit_type_head(
    old: TypeHead,
    base_x: np.ndarray,
    base_types: list[str],
    feedback_x: np.ndarray,
    feedback_types: list[str],
    folds: int = 5,
    min_defects: int = 3,
    max_drop: float = 0.05,
) -> TypeRefit:
    """Re-fit ``old`` on the test split's defects (``base_*``) plus confirmed feedback (``feedback_*``)."""
    counts = {t: feedback_types.count(t) for t in sorted(set(feedback_types))}
    new_types = sorted(t for t, n in counts.items() if t not in old.class_names and n >= MIN_NEW_TYPE)
    classes = [*old.class_names, *new_types]
    usable = np.array([t in classes for t in feedback_types], bool)
    report: dict[str, Any] = {
        "type_head_classes_before": list(old.class_names),
        "type_head_feedback_used": int(usable.sum()),
        "type_head_feedback_ignored": {t: n for t, n in counts.items() if t not in classes},
    }
    if usable.sum() < min_defects:
        report["type_head"] = f"kept: {int(usable.sum())} usable confirmed defects, {min_defects} needed"
        return TypeRefit(None, report)
    fx, fy = feedback_x[usable], np.array([classes.index(t) for t in np.array(feedback_types)[usable]])
    bx, by = base_x, np.array([classes.index(t) for t in base_types])
    old_pred = old.probabilities(fx).argmax(axis=1)
    report["feedback_types_correct_before"] = int((old_pred == fy).sum())
    report["feedback_types_correct_after_loo"] = _leave_one_out(bx, by, fx, fy, len(classes))
    before, after = _cross_validated_f1(bx, by, fx, fy, len(classes), folds)
    report.update(types_macro_f1_cv_before=before, types_macro_f1_cv_after=after, feedback_frames=len(fy))
    if before - after > max_drop:
        kept = f"kept: macro F1 of the test split's types {after:.3f} with feedback, {before:.3f} without"
        report["type_head"] = kept
        return TypeRefit(None, report)
    fitted = fit_logistic(np.concatenate([bx, fx]), np.concatenate([by, fy]), len(classes))
    report.update(type_head="re-fitted", type_head_classes_after=classes)
    log.info("type head re-fitted on %d + %d frames; classes %s", len(by), len(fy), classes)
    return TypeRefit(TypeHead(classes, fitted.mean, fitted.std, fitted.weights, fitted.bias), report)


def _leave_one_out(bx: np.ndarray, by: np.ndarray, fx: np.ndarray, fy: np.ndarray, n: int) -> int:
    """How many feedback frames a head fitted without each of them types correctly."""
    correct = 0
    for i in range(len(fy)):
        keep = np.arange(len(fy)) != i
        head = fit_logistic(np.concatenate([bx, fx[keep]]), np.concatenate([by, fy[keep]]), n)
        correct += int(head.probabilities(fx[i : i + 1]).argmax(axis=1)[0] == fy[i])
    return correct


def _cross_validated_f1(
    bx: np.ndarray, by: np.ndarray, fx: np.ndarray, fy: np.ndarray, n: int, folds: int
) -> tuple[float, float]:
    """Macro F1 of the test split's types, out of fold, fitted without and with the feedback frames.

    The mean runs over the test split's own types: a defect called by a type new from feedback counts as a miss of
    its true type (not once more as a zero for the new type, which the test split never holds).
    """
    from training.train_classifier import stratified_folds

    without, with_feedback = np.full(len(by), -1), np.full(len(by), -1)
    for held in stratified_folds(by, folds):
        fit = np.setdiff1d(np.arange(len(by)), held)
        without[held] = fit_logistic(bx[fit], by[fit], n).probabilities(bx[held]).argmax(axis=1)
        head = fit_logistic(np.concatenate([bx[fit], fx]), np.concatenate([by[fit], fy]), n)
        with_feedback[held] = head.probabilities(bx[held]).argmax(axis=1)
    present = np.unique(by)
    return tuple(float(per_class_f1(by, pred, n)[present].mean()) for pred in (without, with_feedback))  # type: ignore[return-value]

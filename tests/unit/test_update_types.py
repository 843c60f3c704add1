"""Re-fitting the type head from confirmed feedback (``training.update_types``) on separable feature clusters."""

from __future__ import annotations

import numpy as np

from edge_agent.type_head import TypeHead
from training.type_head import fit_logistic
from training.update_types import MIN_NEW_TYPE, refit_type_head

KNOWN = ["broken", "dent", "stain"]


def cluster(centre: int, n: int, rng: np.random.Generator, dim: int = 12) -> np.ndarray:
    x = rng.normal(0.0, 0.3, (n, dim)).astype(np.float32)
    x[:, centre] += 3.0
    return x


def old_head(rng: np.random.Generator) -> tuple[TypeHead, np.ndarray, list[str]]:
    x = np.concatenate([cluster(i, 8, rng) for i in range(3)])
    types = [t for t in KNOWN for _ in range(8)]
    fitted = fit_logistic(x, np.repeat(np.arange(3), 8), 3)
    return TypeHead(KNOWN, fitted.mean, fitted.std, fitted.weights, fitted.bias), x, types


def test_a_new_type_from_feedback_becomes_a_class():
    rng = np.random.default_rng(0)
    head, base_x, base_types = old_head(rng)
    feedback_x = np.concatenate([cluster(5, 6, rng), cluster(0, 2, rng), cluster(7, MIN_NEW_TYPE - 1, rng)])
    feedback_types = ["scratch"] * 6 + ["broken"] * 2 + ["rare"] * (MIN_NEW_TYPE - 1)
    refit = refit_type_head(head, base_x, base_types, feedback_x, feedback_types, folds=4)
    assert refit.head is not None and refit.head.class_names == [*KNOWN, "scratch"]
    report = refit.report
    assert report["type_head"] == "re-fitted" and report["type_head_feedback_ignored"] == {"rare": MIN_NEW_TYPE - 1}
    assert report["feedback_frames"] == 8
    assert report["feedback_types_correct_before"] == 2  # the old head knows "broken", not "scratch"
    assert report["feedback_types_correct_after_loo"] >= 7
    assert report["types_macro_f1_cv_after"] >= report["types_macro_f1_cv_before"] - 0.05
    unseen = cluster(5, 5, rng)
    assert (refit.head.probabilities(unseen).argmax(axis=1) == 3).all()


def test_too_few_confirmed_defects_keep_the_old_head():
    rng = np.random.default_rng(1)
    head, base_x, base_types = old_head(rng)
    refit = refit_type_head(head, base_x, base_types, cluster(1, 2, rng), ["dent", "dent"], min_defects=3)
    assert refit.head is None and refit.report["type_head"].startswith("kept: 2 usable")


def test_feedback_that_confuses_the_known_types_is_refused():
    rng = np.random.default_rng(2)
    head, base_x, base_types = old_head(rng)
    mislabelled = np.concatenate([cluster(0, 12, rng), cluster(1, 12, rng)])  # broken frames called dent, and back
    types = ["dent"] * 12 + ["broken"] * 12
    refit = refit_type_head(head, base_x, base_types, mislabelled, types, folds=4, max_drop=0.05)
    assert refit.head is None and refit.report["type_head"].startswith("kept: macro F1")

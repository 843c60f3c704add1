"""The anomaly-guided type head: features pooled where the map is high, the regression, the line's figures."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.type_head import SHAPE_FEATURES, TypeHead, type_features
from training.type_head import DEEP_TAP, DEEP_TIE, LAST_PATCH_TAP, choose_deep_tap, cross_validate, fit_logistic

GRID = (20, 20)


def _image(rng: np.random.Generator, defect: np.ndarray, where: slice, dim: int = 8, deep_dim: int = 6):
    """Patches of noise with ``defect`` pasted (and far from the bank) in the rows ``where`` of the grid."""
    patches = rng.normal(0, 0.1, (GRID[0] * GRID[1], dim)).astype(np.float32)
    distances = rng.uniform(0.5, 1.0, len(patches)).astype(np.float32)
    patches[where] += defect
    distances[where] = 10.0
    deep = rng.normal(0, 0.1, (5, 5, deep_dim)).astype(np.float32)
    return patches, distances, deep


def test_features_pool_the_most_anomalous_patches():
    rng = np.random.default_rng(0)
    defect = np.arange(8, dtype=np.float32)
    patches, distances, deep = _image(rng, defect, slice(0, 8))
    features = type_features(patches, distances, GRID, deep)
    assert features.shape == (8 + 6 + SHAPE_FEATURES,) and features.dtype == np.float32
    # the top 2 % of 400 patches are the 8 pasted ones: their mean, not the noise
    np.testing.assert_allclose(features[:8], patches[:8].mean(axis=0), atol=1e-5)
    # the deep map is weighted where the distance map is high: the first grid rows map to the first deep row
    deep[0] += 5.0
    assert type_features(patches, distances, GRID, deep)[8:14].mean() > features[8:14].mean() + 1.0


def test_a_larger_defect_reads_as_larger():
    rng = np.random.default_rng(1)
    defect = np.ones(8, np.float32)
    small = type_features(*_rearrange(_image(rng, defect, slice(0, 8))))
    large = type_features(*_rearrange(_image(rng, defect, slice(0, 120))))
    share = -2  # log share of patches above half the peak
    assert large[share] > small[share] + 2.0


def _rearrange(parts):
    patches, distances, deep = parts
    return patches, distances, GRID, deep


def test_head_round_trip_and_probabilities(tmp_path):
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(-2, 1, (20, 5)), rng.normal(2, 1, (20, 5))]).astype(np.float32)
    y = np.r_[np.zeros(20, int), np.ones(20, int)]
    fitted = fit_logistic(x, y, 2)
    head = TypeHead(["scratch", "dent"], fitted.mean, fitted.std, fitted.weights, fitted.bias)
    head.save(tmp_path / "head.npz")
    loaded = TypeHead.load(tmp_path / "head.npz")
    assert loaded.class_names == ["scratch", "dent"] and loaded.n_features == 5
    probs = loaded.probabilities(x)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    assert (probs.argmax(axis=1) == y).mean() == 1.0
    np.testing.assert_allclose(loaded.probabilities(x[0]), probs[0], rtol=1e-6)


def test_cross_validation_reports_what_the_line_sees():
    """Good = below the scorer's threshold: a missed defect counts against its type, a false alarm against good."""
    rng = np.random.default_rng(3)
    centres = np.array([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    types = np.r_[np.full(10, -1), np.repeat([0, 1, 2], 10)]
    features = np.concatenate([rng.normal(0, 0.3, (10, 2)), *(rng.normal(c, 0.3, (10, 2)) for c in centres)])
    anomalous = types >= 0
    perfect = cross_validate(features, types, 3, anomalous, folds=5)
    assert perfect["types_macro_f1"] == pytest.approx(1.0) and perfect["macro_f1"] == pytest.approx(1.0)
    anomalous = anomalous.copy()
    anomalous[10] = False  # one missed defect of type 0
    anomalous[0] = True  # one false alarm
    flawed = cross_validate(features, types, 3, anomalous, folds=5)
    cm = np.array(flawed["confusion_matrix"])
    assert cm[1, 0] == 1 and cm[0, 0] == 9 and cm[0, 1:].sum() == 1
    assert flawed["types_macro_f1"] == pytest.approx(1.0) and flawed["macro_f1"] < 1.0


def test_cross_validation_averages_repeated_splits():
    """The F1 figures are the means over the repeats, each repeat a split of its own seed."""
    rng = np.random.default_rng(5)
    types = np.repeat([0, 1, 2], 8)
    features = rng.normal(0, 1.0, (24, 4)) + np.eye(3, 4)[types] * 1.2  # overlapping: the split matters
    anomalous = np.ones(24, bool)
    report = cross_validate(features, types, 3, anomalous, folds=4, seed=7, repeats=3)
    singles = [cross_validate(features, types, 3, anomalous, folds=4, seed=7 + r, repeats=1) for r in range(3)]
    assert report["macro_f1_per_repeat"] == pytest.approx([s["macro_f1"] for s in singles])
    assert report["macro_f1"] == pytest.approx(np.mean(report["macro_f1_per_repeat"]))
    assert report["types_macro_f1"] == pytest.approx(np.mean([s["types_macro_f1"] for s in singles]))
    assert report["confusion_matrix"] == singles[0]["confusion_matrix"]
    assert len(set(report["macro_f1_per_repeat"])) > 1  # the seeds gave different splits


def test_the_deeper_map_is_the_cheaper_one_unless_the_other_clearly_wins():
    # bottle's and tire's figures (make bench-type-tail): stage 7 wins on bottle, the last patch tap on tire
    assert choose_deep_tap({LAST_PATCH_TAP: 0.871, DEEP_TAP: 0.931}) == DEEP_TAP
    assert choose_deep_tap({LAST_PATCH_TAP: 0.402, DEEP_TAP: 0.318}) == LAST_PATCH_TAP
    # within the tie the cheaper map (no tail graph on the edge) is kept
    assert choose_deep_tap({LAST_PATCH_TAP: 0.925, DEEP_TAP: 0.925 + DEEP_TIE / 2}) == LAST_PATCH_TAP
    assert choose_deep_tap({DEEP_TAP: 0.5}) == DEEP_TAP

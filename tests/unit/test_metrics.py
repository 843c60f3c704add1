import time
import warnings

import numpy as np
import pytest

from training import metrics


def test_roc_auc_hand_computed():
    # positive/negative pairs: (0.35 > 0.1) (0.35 < 0.4) (0.8 > 0.1) (0.8 > 0.4) -> 3/4
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert metrics.roc_auc([True, False], [0.9, 0.1]) == pytest.approx(1.0)
    assert metrics.roc_auc([1, 0], [0.9, 0.1]) == pytest.approx(1.0)
    assert metrics.roc_auc([0, 1], [0.9, 0.1]) == pytest.approx(0.0)


def test_roc_auc_ties_count_half():
    assert metrics.roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    # pairs: (0.5 vs 0.2)=1, (0.9 vs 0.2)=1, (0.5 vs 0.5)=0.5, (0.9 vs 0.5)=1 -> 3.5/4
    assert metrics.roc_auc([0, 0, 1, 1], [0.2, 0.5, 0.5, 0.9]) == pytest.approx(0.875)
    assert metrics.roc_auc([0, 0, 1, 1, 1], [1.0] * 5) == pytest.approx(0.5)


def test_roc_auc_matches_pairwise_count_on_random_data():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    scores = rng.integers(0, 20, 300).astype(float)  # many ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    expected = ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size
    assert metrics.roc_auc(labels, scores) == pytest.approx(expected)


def test_roc_auc_single_class_raises():
    with pytest.raises(ValueError, match="only one class"):
        metrics.roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="only one class"):
        metrics.roc_auc([0, 0], [0.1, 0.2])


def test_roc_curve_hand_computed():
    fpr, tpr, thr = metrics.roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    np.testing.assert_allclose(fpr, [0.0, 0.0, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(tpr, [0.0, 0.5, 0.5, 1.0, 1.0])
    assert thr[0] == np.inf
    np.testing.assert_allclose(thr[1:], [0.8, 0.4, 0.35, 0.1])
    area = np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)
    assert area == pytest.approx(0.75)


def test_roc_curve_groups_tied_scores():
    fpr, tpr, thr = metrics.roc_curve([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9])
    np.testing.assert_allclose(thr[1:], [0.9, 0.5, 0.2])
    np.testing.assert_allclose(fpr, [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(tpr, [0.0, 0.5, 1.0, 1.0])


def test_binary_report_hand_computed():
    labels = [1, 1, 1, 0, 0, 0, 0, 1]
    preds = [1, 0, 1, 1, 0, 0, 0, 0]
    r = metrics.binary_report(labels, preds)
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (2, 1, 3, 2)
    assert all(isinstance(r[k], int) for k in ("tp", "fp", "tn", "fn"))
    assert r["precision"] == pytest.approx(2 / 3)
    assert r["recall"] == pytest.approx(0.5)
    assert r["f1"] == pytest.approx(4 / 7)
    assert r["accuracy"] == pytest.approx(5 / 8)


def test_binary_report_undefined_ratios_are_zero_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = metrics.binary_report([0, 0, 0], [False, False, False])
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (0, 0, 3, 0)
    assert r["precision"] == 0.0
    assert r["recall"] == 0.0
    assert r["f1"] == 0.0
    assert r["accuracy"] == 1.0


def test_confusion_matrix_hand_computed():
    cm = metrics.confusion_matrix([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 0, 2], 3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    np.testing.assert_array_equal(metrics.confusion_matrix([], [], 2), np.zeros((2, 2)))
    with pytest.raises(ValueError):
        metrics.confusion_matrix([0, 3], [0, 1], 3)


def test_per_class_and_macro_f1_hand_computed():
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 0, 2]
    # class 0: tp1 fp1 fn1 -> 2/4; class 1: tp2 fp1 fn0 -> 4/5; class 2: tp1 fp0 fn1 -> 2/3
    expected = [0.5, 0.8, 2 / 3]
    np.testing.assert_allclose(metrics.per_class_f1(y_true, y_pred, 3), expected)
    assert metrics.macro_f1(y_true, y_pred, 3) == pytest.approx(np.mean(expected))
    # a class in neither input (3) gets F1 0 but does not enter the macro mean
    np.testing.assert_allclose(metrics.per_class_f1(y_true, y_pred, 4), [*expected, 0.0])
    assert metrics.macro_f1(y_true, y_pred, 4) == pytest.approx(np.mean(expected))


def test_macro_f1_counts_class_only_predicted():
    # class 0: tp1 fn1 -> 2/3; class 1 predicted but never true -> 0 and counted
    assert metrics.macro_f1([0, 0], [0, 1], 2) == pytest.approx(1 / 3)
    assert metrics.macro_f1([0, 0], [0, 0], 2) == pytest.approx(1.0)


def test_threshold_for_f1_hand_computed():
    # thresholds 0.8 -> 2/3, 0.4 -> 1/2, 0.35 -> 4/5, 0.1 -> 2/3
    thr, f1 = metrics.threshold_for_f1([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert thr == pytest.approx(0.35)
    assert f1 == pytest.approx(0.8)
    thr, f1 = metrics.threshold_for_f1([0, 1, 1], [0.1, 0.7, 0.9])
    assert (thr, f1) == (pytest.approx(0.7), pytest.approx(1.0))


def test_pixel_auroc_equals_roc_auc_on_flattened_data():
    rng = np.random.default_rng(2)
    masks = rng.random((3, 8, 9)) < 0.2
    maps = rng.random((3, 8, 9)) + masks * 0.4
    expected = metrics.roc_auc(masks.ravel(), maps.ravel())
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(expected)
    assert metrics.pixel_auroc(masks, maps, max_pixels=None) == pytest.approx(expected)


def test_pixel_auroc_subsample_is_seeded_and_close():
    rng = np.random.default_rng(3)
    masks = rng.random((4, 50, 50)) < 0.3
    maps = rng.random((4, 50, 50)) + masks * 0.5
    full = metrics.pixel_auroc(masks, maps, max_pixels=None)
    sub = metrics.pixel_auroc(masks, maps, max_pixels=2000, seed=7)
    assert sub == metrics.pixel_auroc(masks, maps, max_pixels=2000, seed=7)
    assert sub != metrics.pixel_auroc(masks, maps, max_pixels=2000, seed=8)
    assert sub == pytest.approx(full, abs=0.05)


def test_iou_dice_tiny_masks_summed_over_images():
    masks = np.zeros((2, 2, 3), bool)
    masks[0, 0, :2] = True
    maps = np.zeros((2, 2, 3))
    maps[0, 0] = [0.9, 0.2, 0.8]
    maps[1, 1, 1] = 0.7  # false positive on the defect-free image
    # pred: (0,0,0), (0,0,2), (1,1,1); truth: (0,0,0), (0,0,1) -> inter 1, union 4
    iou, dice = metrics.iou_dice(masks, maps, 0.5)
    assert iou == pytest.approx(1 / 4)
    assert dice == pytest.approx(2 * 1 / (3 + 2))
    iou, dice = metrics.iou_dice(masks[:1], maps[:1], 0.5)
    assert (iou, dice) == (pytest.approx(1 / 3), pytest.approx(0.5))
    # threshold is inclusive
    assert metrics.iou_dice(masks[:1], maps[:1], 0.9)[0] == pytest.approx(1 / 2)


def test_iou_dice_both_empty_is_perfect():
    assert metrics.iou_dice(np.zeros((1, 3, 3), bool), np.zeros((1, 3, 3)), 0.5) == (1.0, 1.0)


def _two_region_case() -> tuple[np.ndarray, np.ndarray]:
    """Image 0: region B (2x4, 8 px: top row 1.0, bottom row 0.25) and region A (2x2, 1.0), split by column 4.

    Image 1 is defect-free with 3 normal pixels at 0.5. Normal pixels: 9 + 21 = 30, so FPR at 0.5 is 3/30 = 0.1.
    """
    masks = np.zeros((2, 3, 7), bool)
    maps = np.zeros((2, 3, 7))
    masks[0, 0:2, 0:4] = True
    maps[0, 0, 0:4] = 1.0
    maps[0, 1, 0:4] = 0.25
    masks[0, 0:2, 5:7] = True
    maps[0, 0:2, 5:7] = 1.0
    maps[1, 2, 0:3] = 0.5
    return masks, maps


def test_pro_curve_point_two_regions():
    masks, maps = _two_region_case()
    fpr, pro, thr = metrics.pro_curve(masks, maps, num_thresholds=5)  # linspace hits 0, .25, .5, .75, 1
    assert (fpr[0], pro[0], thr[0]) == (0.0, 0.0, np.inf)
    at = {float(t): (f, p) for f, p, t in zip(fpr, pro, thr, strict=True)}
    # t = 1.0: region A fully, region B half detected, no normal pixel -> PRO (1 + 0.5) / 2
    assert at[1.0] == (pytest.approx(0.0), pytest.approx(0.75))
    assert at[0.5] == (pytest.approx(0.1), pytest.approx(0.75))
    assert at[0.25] == (pytest.approx(0.1), pytest.approx(1.0))
    assert at[0.0] == (pytest.approx(1.0), pytest.approx(1.0))
    assert np.all(np.diff(fpr) >= 0)
    assert np.all(np.diff(pro) >= 0)


def test_pro_auc_two_regions_hand_computed():
    masks, maps = _two_region_case()
    # curve (0,0) (0,.75) (.1,.75) (.1,1) (1,1): area to 0.3 = .75*.1 + 1*.2
    assert metrics.pro_auc(masks, maps, 0.3, num_thresholds=5) == pytest.approx(0.275 / 0.3)
    assert metrics.pro_auc(masks, maps, 1.0, num_thresholds=5) == pytest.approx(0.075 + 0.9)
    assert metrics.pro_auc(masks, maps, 0.05, num_thresholds=5) == pytest.approx(0.75)


def test_pro_auc_perfect_and_constant_maps():
    masks, _ = _two_region_case()
    assert metrics.pro_auc(masks, masks.astype(float)) == pytest.approx(1.0)
    # constant map: curve (0,0) -> (1,1), PRO interpolated to 0.3 at FPR 0.3: area 0.045 / 0.3
    assert metrics.pro_auc(masks, np.full(masks.shape, 0.4)) == pytest.approx(0.15)
    assert metrics.pro_auc(masks, np.full(masks.shape, 0.4), fpr_limit=0.1) == pytest.approx(0.05)


def test_pro_regions_use_8_connectivity():
    masks = np.zeros((1, 4, 4), bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # diagonal neighbours: one region
    masks[0, 3, 3] = True
    maps = np.zeros((1, 4, 4))
    maps[0, 0, 0] = 1.0  # half of the diagonal region; the single-pixel region missed
    fpr, pro, thr = metrics.pro_curve(masks, maps, num_thresholds=2)
    assert thr[1] == 1.0
    assert (fpr[1], pro[1]) == (0.0, pytest.approx((0.5 + 0.0) / 2))


def test_pro_curve_matches_naive_loop():
    rng = np.random.default_rng(4)
    masks = np.zeros((5, 20, 20), bool)
    masks[0, 2:6, 2:9] = True
    masks[0, 12:14, 15:19] = True
    masks[2, 5:15, 5:7] = True
    masks[3, 0:3, 0:3] = True
    maps = rng.random(masks.shape) + masks * rng.random(masks.shape)
    fpr, pro, thr = metrics.pro_curve(masks, maps, num_thresholds=50)
    boxes = [np.s_[0, 2:6, 2:9], np.s_[0, 12:14, 15:19], np.s_[2, 5:15, 5:7], np.s_[3, 0:3, 0:3]]
    for f, p, t in zip(fpr[1:], pro[1:], thr[1:], strict=True):
        pred = maps >= t
        assert f == pytest.approx(pred[~masks].mean())
        assert p == pytest.approx(np.mean([pred[b].mean() for b in boxes]))


def test_pro_auc_without_region_raises():
    with pytest.raises(ValueError, match="no anomalous region"):
        metrics.pro_auc(np.zeros((2, 4, 4), bool), np.random.default_rng(0).random((2, 4, 4)))


def test_pro_auc_is_fast_on_100_images():
    rng = np.random.default_rng(5)
    masks = np.zeros((100, 256, 256), bool)
    for i in range(0, 100, 2):
        y, x = rng.integers(0, 200, 2)
        masks[i, y : y + rng.integers(5, 50), x : x + rng.integers(5, 50)] = True
    maps = rng.random(masks.shape, dtype=np.float32) + masks * 0.5
    start = time.perf_counter()
    value = metrics.pro_auc(masks, maps)
    assert time.perf_counter() - start < 20.0
    assert 0.5 < value <= 1.0

"""The false-alarm-rate threshold: an order statistic of normal scores, robust to one odd image."""

import math

import numpy as np
import pytest
from pydantic import ValidationError

from edge_agent.scoring import Calibration, false_alarm_threshold, fit_calibration, normal_scores_needed
from training.config import ThresholdConfig
from training.models.patchcore import MemoryBank, StandIns, build_memory_bank, leave_one_out_scores


def test_order_statistic_with_enough_normal_scores():
    scores = np.arange(1, 301, dtype=float)  # 300 distinct normal scores
    threshold, bound, note = false_alarm_threshold(scores, 0.01)
    k = math.ceil(301 * 0.99)  # 298
    assert threshold == scores[k - 1] == 298.0
    assert note is None
    assert bound == pytest.approx((1 + 2) / 301)  # two scores above it
    assert bound <= 0.01


def test_one_odd_image_does_not_move_the_threshold():
    rng = np.random.default_rng(0)
    scores = rng.lognormal(0.0, 0.2, 400)
    before, _, _ = false_alarm_threshold(scores, 0.01)
    odd = scores.copy()
    odd[np.argmax(odd)] = 1e6  # a mislabelled defect among the normals
    after, _, _ = false_alarm_threshold(odd, 0.01)
    assert after == before


def test_too_few_scores_warn_with_the_number_needed_and_stay_robust():
    rng = np.random.default_rng(1)
    scores = rng.lognormal(0.0, 0.2, 30)
    threshold, bound, note = false_alarm_threshold(scores, 0.01)
    assert normal_scores_needed(0.01) == 199
    assert note is not None and "199 are needed" in note and "30 normal scores" in note
    assert threshold >= np.sort(scores)[-2]
    odd = scores.copy()
    odd[np.argmax(odd)] = 1e6
    assert false_alarm_threshold(odd, 0.01)[0] == pytest.approx(threshold, rel=0.2)  # not 1e6
    assert 0 < bound <= 2 / 31


def test_false_alarm_rate_holds_on_new_normal_scores():
    """Fitted on 500 normal scores, the threshold flags about the rate asked on 100,000 new ones."""
    rng = np.random.default_rng(2)
    threshold, bound, _ = false_alarm_threshold(rng.gamma(4.0, 1.0, 500), 0.02)
    new = rng.gamma(4.0, 1.0, 100_000)
    observed = float((new >= threshold).mean())
    assert 0.005 < observed < 0.035
    assert bound == pytest.approx(0.02, abs=0.005)


def test_fit_calibration_pools_extra_normal_scores_and_round_trips():
    val = np.linspace(1.0, 2.0, 31)
    extra = np.linspace(1.0, 2.2, 178)
    cal = fit_calibration(val, None, false_alarm_rate=0.05, extra_scores=extra)
    assert cal.method == "false_alarm_rate" and cal.n_validation == 31 and cal.n_normal == 209
    assert cal.false_alarm_rate == 0.05 and cal.note is None
    assert cal.false_alarm_bound <= 0.05
    assert Calibration.from_dict(cal.to_dict()) == cal
    old = {k: v for k, v in cal.to_dict().items() if k in ("threshold", "center", "pixel_threshold", "method")}
    with pytest.raises(ValidationError, match="false_alarm_rate"):  # no defaults at the reader
        Calibration.from_dict({**old, "n_validation": 31})


def test_threshold_config_defaults_to_one_percent_false_alarms():
    cfg = ThresholdConfig()
    assert cfg.method == "false_alarm_rate" and cfg.false_alarm_rate == 0.01
    with pytest.raises(ValueError, match="false_alarm_rate"):
        ThresholdConfig(false_alarm_rate=0.7)


def _toy_bank(patches: np.ndarray, ratio: float) -> MemoryBank:
    """Memory bank of toy patch arrays (N, P, D), the images standing for their own embeddings."""
    images = np.arange(len(patches), dtype=np.uint8).reshape(-1, 1, 1, 1)
    return build_memory_bank(lambda x: patches[x[:, 0, 0, 0]], images, ratio, 1000, None)


def test_leave_one_out_scores_each_image_against_the_others():
    # image 0 and 1 are alike, image 2 is unlike anything else: only its own rows could cover it
    patches = np.array([[[0.0, 0.0]] * 4, [[0.1, 0.0]] * 4, [[5.0, 5.0]] * 4], np.float32)
    scores = leave_one_out_scores(patches, _toy_bank(patches, 1.0), (2, 2), 4, 0.0, None)
    np.testing.assert_allclose(scores[:2], [0.1, 0.1], rtol=1e-3)
    assert scores[2] > 6.0


def test_leave_one_out_takes_the_midpoint_with_and_without_stand_ins_where_the_coreset_kept_one_of_alike_rows():
    # images 0 and 1 share a look A that image 2 lacks; a two-row coreset keeps one A row, from one of them
    a, c = [10.0, 0.0], [0.0, 0.0]
    patches = np.array([[a, c, c, c], [a, c, c, c], [c, c, c, c]], np.float32)
    bank = _toy_bank(patches, 2 / 12)
    assert len(bank.rows) == 2
    kept_a = int(bank.sources[np.argmax(bank.rows[:, 0])])
    # without stand-ins the part whose A row was kept would score 10 (its A patch against C rows only)
    assert bank.stand_ins.sources[np.argmax(bank.rows[:, 0])] == 1 - kept_a
    scores = leave_one_out_scores(patches, bank, (2, 2), 4, 0.0, None)
    # a part that gave a row scores 10 without its rows (its patches 10 from the other row) and 0 with another
    # part's alike patch standing in: the midpoint, 5. A part that gave none finds both looks in the bank: 0
    gave = np.isin(np.arange(3), bank.sources)
    assert gave[kept_a] and gave.sum() == 2
    np.testing.assert_allclose(scores, np.where(gave, 5.0, 0.0), atol=1e-3)


def test_a_left_out_rows_stand_in_takes_its_place_unless_it_is_the_same_image():
    patches = np.array([[[0.0, 0.0]], [[1.0, 0.0]]], np.float32)
    rows, sources = patches.reshape(2, 2), np.array([0, 1])
    # row 0's stand-in comes from image 1; row 1 has none from another image (it stands in for itself)
    aid = StandIns(np.array([[0.5, 0.0], [0.2, 0.0]], np.float32), np.array([1, 1]))
    scores = leave_one_out_scores(patches, MemoryBank(rows, sources, None, aid), (1, 1), 1, 0.0, None)
    np.testing.assert_allclose(scores, [(1.0 + 0.5) / 2, 1.0], atol=1e-4)

"""Synthetic defects: seeded, on the part, every kind small and large, the mask marks exactly what changed."""

import numpy as np
import pytest

from edge_agent.preprocess import PreprocessSpec, load_prepared
from training.synthetic import KINDS, foreground_mask, make_defects


@pytest.fixture(scope="module")
def bottle_images(datasets_root):
    folder = datasets_root / "mvtec_ad" / "bottle" / "train" / "good"
    return [load_prepared(p, PreprocessSpec(224)) for p in sorted(folder.glob("*.png"))[:4]]


def test_defects_are_seeded_and_cover_every_kind_and_size(bottle_images):
    images, _, labels = make_defects(bottle_images, per_image=5, seed=3)
    again, _, _ = make_defects(bottle_images, per_image=5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(images, again, strict=True))
    assert {label.split("/")[0] for label in labels} == set(KINDS)
    assert {label.split("/")[1] for label in labels} == {"small", "large"}
    other, _, _ = make_defects(bottle_images, per_image=5, seed=4)
    assert any(not np.array_equal(a, b) for a, b in zip(images, other, strict=True))


def test_mask_marks_what_changed_and_lies_on_the_part(bottle_images):
    images, masks, labels = make_defects(bottle_images, per_image=5, seed=0)
    for source, changed, mask, label in zip(np.repeat(bottle_images, 5, axis=0), images, masks, labels, strict=True):
        differs = (changed != source).any(axis=2)
        assert mask.any(), label
        assert not (differs & ~mask).any(), label  # nothing outside the mask changed
        assert differs[mask].mean() > 0.3, label  # most of the masked area did change
        assert (mask & ~foreground_mask(source)).sum() == 0, label
    small = [m.mean() for m, lab in zip(masks, labels, strict=True) if lab.endswith("small")]
    large = [m.mean() for m, lab in zip(masks, labels, strict=True) if lab.endswith("large")]
    assert np.median(small) < np.median(large) < 0.2


def test_foreground_is_the_round_bottle_not_the_black_corners(bottle_images):
    fg = foreground_mask(bottle_images[0])
    assert 0.5 < fg.mean() < 0.95
    assert not fg[0, 0] and not fg[-1, -1] and fg[112, 112]
    assert foreground_mask(np.full((64, 64, 3), 128, np.uint8)).all()  # no part found: the whole frame


def test_non_square_images_are_refused():
    with pytest.raises(ValueError, match="square"):
        make_defects([np.zeros((10, 20, 3), np.uint8)])


def test_synthetic_recall_is_the_share_at_or_above_the_threshold(bottle_images):
    from training.synthetic import synthetic_recall

    images = np.stack(bottle_images)
    changed = lambda batch: (batch != images.repeat(3, axis=0)).any(axis=(1, 2, 3)).astype(float)  # noqa: E731
    assert synthetic_recall(changed, images, 1.0, seed=0) == 1.0  # every defect changes its image
    assert synthetic_recall(lambda batch: np.zeros(len(batch)), images, 0.5, seed=0) == 0.0
    assert synthetic_recall(changed, images[..., :1], 1.0, seed=0) is None  # gray: no synthetic defects

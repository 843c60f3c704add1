import logging
import shutil

import numpy as np
import pytest

from edge_agent.preprocess import PreprocessSpec
from training.augment import augment_batch
from training.config import AugmentConfig, DatasetConfig
from training.data import load_dataset, load_images, load_masks
from training.describe import describe


def bottle_cfg(**kw):
    return DatasetConfig(name="bottle", layout="mvtec", root="mvtec_ad/bottle", **kw)


def casting_cfg(**kw):
    return DatasetConfig(
        name="casting", layout="folder", root="casting", normal_dirs=["ok_front"], defect_dirs=["def_front"], **kw
    )


def test_bottle_split_counts(datasets_root):
    splits = load_dataset(bottle_cfg(val_fraction=0.15))
    assert len(splits.train) + len(splits.validation) == 209
    assert len(splits.validation) == 31
    assert len(splits.test) == 83
    assert splits.defect_types == ["broken_large", "broken_small", "contamination"]
    assert splits.has_masks
    assert {s.path.name for s in splits.train}.isdisjoint({s.path.name for s in splits.validation})


def test_tire_uses_its_own_validation_folder(datasets_root):
    splits = load_dataset(DatasetConfig(name="tire", layout="mvtec", root="mvtec_3d_rgb/tire"))
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (210, 29, 112)
    assert all("validation" in str(s.path) for s in splits.validation)


def test_casting_split_is_seeded_and_disjoint(datasets_root):
    a, b = load_dataset(casting_cfg(seed=3)), load_dataset(casting_cfg(seed=3))
    c = load_dataset(casting_cfg(seed=4))
    assert [s.path for s in a.train] == [s.path for s in b.train]
    assert [s.path for s in a.train] != [s.path for s in c.train]
    train = {s.path for s in a.train}
    test_normals = {s.path for s in a.test if s.label == 0}
    assert train.isdisjoint(test_normals) and train.isdisjoint({s.path for s in a.validation})
    assert len(train) + len(test_normals) + len(a.validation) == 519
    assert sum(s.label for s in a.test) == 781
    assert not a.has_masks


def test_max_test_defects_caps_with_a_seed(datasets_root):
    splits = load_dataset(casting_cfg(max_test_defects=50))
    assert sum(s.label for s in splits.test) == 50


def test_masks_align_with_defects(datasets_root):
    splits = load_dataset(bottle_cfg())
    spec = PreprocessSpec(64)
    picked = [s for s in splits.test if s.defect_type in ("good", "broken_large")][:25]
    masks = load_masks(picked, spec)
    for sample, mask in zip(picked, masks, strict=True):
        assert mask.any() == (sample.label == 1)


def test_bad_files_are_named_and_the_rest_loads(datasets_root, tmp_path, caplog):
    root = tmp_path / "bottle"
    src = datasets_root / "mvtec_ad" / "bottle"
    for sub in ("train/good", "test/good", "test/broken_large", "ground_truth/broken_large"):
        (root / sub).mkdir(parents=True)
        for f in sorted((src / sub).iterdir())[:4]:
            shutil.copy(f, root / sub / f.name)
    (root / "train/good/zz_empty.png").write_bytes(b"")
    (root / "train/good/zz_truncated.png").write_bytes((src / "train/good/000.png").read_bytes()[:900])
    (root / "train/good/zz_text.png").write_text("not an image")
    (root / "train/good/notes.txt").write_text("operator notes")
    cfg = DatasetConfig(name="t", layout="mvtec", root=str(root), val_fraction=0.0)
    splits = load_dataset(cfg)
    with caplog.at_level(logging.WARNING):
        images, kept = load_images(splits.train, PreprocessSpec(32), splits.skipped)
    assert images.shape == (4, 32, 32, 3) and len(kept) == 4
    for name in ("zz_empty.png", "zz_truncated.png", "zz_text.png", "notes.txt"):
        assert name in caplog.text
        assert any(name in s for s in splits.skipped)
    report = describe(splits)
    assert "Skipped or unreadable files: 4" in report


def test_missing_dataset_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(DatasetConfig(name="x", layout="mvtec", root=str(tmp_path / "nowhere")))


def test_describe_reports_counts_sizes_and_coverage(datasets_root):
    report = describe(load_dataset(bottle_cfg()))
    assert "| test | broken_large | 20 |" in report
    assert "512x512: 292" in report
    assert "rgb 8-bit" in report
    assert "| contamination | 21 |" in report


def test_augmentation_respects_config(fixture_images):
    from edge_agent.preprocess import load_prepared

    image = load_prepared(fixture_images / "bottle_good_000.png", PreprocessSpec(64))
    batch = np.stack([image] * 8)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(augment_batch(batch, AugmentConfig(), rng), batch)
    flipped = augment_batch(batch, AugmentConfig(hflip=True), rng)
    for out in flipped:
        assert np.array_equal(out, image) or np.array_equal(out, image[:, ::-1])
    assert any(not np.array_equal(out, image) for out in flipped)
    varied = augment_batch(batch, AugmentConfig(rotate_deg=20, zoom=0.1, brightness=0.1, contrast=0.1), rng)
    assert varied.shape == batch.shape and varied.dtype == np.uint8
    assert len({out.tobytes() for out in varied}) == 8


def test_native_side_is_the_median_shorter_side_of_readable_images(tmp_path):
    import cv2

    from training.data import Sample, native_side

    paths = []
    for i, (h, w) in enumerate([(300, 400), (310, 400), (512, 512)]):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), np.zeros((h, w, 3), np.uint8))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    samples = [Sample(p, 0, "good") for p in [tmp_path / "bad.png", *paths]]
    assert native_side(samples) == 310  # the unreadable file is left out
    assert native_side([Sample(tmp_path / "bad.png", 0, "good")]) == 0

"""Data set loaders for the MVTec AD layout and a plain folder layout, with seeded splits.

MVTec AD layout: ``train/good``, optional ``validation/good``, ``test/<type>`` (``good`` = normal) and
``ground_truth/<type>/<stem>_mask.png``. Without ``validation/good``, ``val_fraction`` of ``train/good`` is
held out (seeded) to fit thresholds.

Folder layout: ``normal_dirs`` hold normal images, each of ``defect_dirs`` one defect type (the folder name).
Normal images are shuffled with ``seed`` and split into test (``test_fraction``), validation
(``val_fraction``) and train (the rest); defective images all go to test, or a seeded sample of
``max_test_defects`` of them. Masks are optional (``<mask_dir>/<type>/<stem>_mask.png``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_agent.errors import ImageDecodeError
from edge_agent.preprocess import IMAGE_SUFFIXES, PreprocessSpec, load_prepared, read_image, resize_mask
from training.config import DatasetConfig

log = logging.getLogger(__name__)

NORMAL = "good"


@dataclass(frozen=True)
class Sample:
    """One image of a data set: its file, label (0 normal, 1 defective), type and optional mask."""

    path: Path
    label: int
    defect_type: str = NORMAL
    mask_path: Path | None = None


@dataclass
class DatasetSplits:
    """Train (normal only), validation (normal only) and test samples of one data set."""

    name: str
    layout: str
    train: list[Sample]
    validation: list[Sample]
    test: list[Sample]
    skipped: list[str] = field(default_factory=list)

    @property
    def defect_types(self) -> list[str]:
        """Sorted defect type names present in the test split."""
        return sorted({s.defect_type for s in self.test if s.label == 1})

    @property
    def has_masks(self) -> bool:
        """True when every defective test image has a ground-truth mask."""
        defects = [s for s in self.test if s.label == 1]
        return bool(defects) and all(s.mask_path is not None for s in defects)


def load_dataset(cfg: DatasetConfig) -> DatasetSplits:
    """Build the splits of the data set described by ``cfg``."""
    root = cfg.resolved_root()
    if not root.is_dir():
        msg = f"data set {cfg.name!r}: folder {root} does not exist (set LINEWATCH_DATASETS?)"
        raise FileNotFoundError(msg)
    if cfg.layout == "mvtec":
        return _load_mvtec(cfg, root)
    return _load_folder(cfg, root)


def list_images(folder: Path, skipped: list[str] | None = None) -> list[Path]:
    """Image files of a folder, sorted; other files are logged and recorded in ``skipped``."""
    images = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            images.append(path)
        else:
            log.warning("skipping %s: not an image file (suffix %r)", path, path.suffix)
            if skipped is not None:
                skipped.append(f"{path}: not an image file")
    return images


def _mask_for(mask_root: Path | None, defect_type: str, image: Path) -> Path | None:
    if mask_root is None:
        return None
    candidate = mask_root / defect_type / f"{image.stem}_mask.png"
    return candidate if candidate.is_file() else None


def _load_mvtec(cfg: DatasetConfig, root: Path) -> DatasetSplits:
    skipped: list[str] = []
    rng = np.random.default_rng(cfg.seed)
    train_files = list_images(root / "train" / "good", skipped)
    val_dir = root / "validation" / "good"
    if val_dir.is_dir():
        val_files = list_images(val_dir, skipped)
    else:
        order = rng.permutation(len(train_files))
        n_val = round(cfg.val_fraction * len(train_files))
        val_files = [train_files[i] for i in sorted(order[:n_val])]
        train_files = [train_files[i] for i in sorted(order[n_val:])]
    test: list[Sample] = []
    gt_root = root / "ground_truth"
    for type_dir in sorted(p for p in (root / "test").iterdir() if p.is_dir()):
        kind = type_dir.name
        for image in list_images(type_dir, skipped):
            if kind == NORMAL:
                test.append(Sample(image, 0))
            else:
                test.append(Sample(image, 1, kind, _mask_for(gt_root, kind, image)))
    test = _cap_defects(test, cfg.max_test_defects, rng)
    return DatasetSplits(cfg.name, "mvtec", _normals(train_files), _normals(val_files), test, skipped)


def _load_folder(cfg: DatasetConfig, root: Path) -> DatasetSplits:
    if not cfg.normal_dirs or not cfg.defect_dirs:
        msg = f"data set {cfg.name!r}: folder layout needs normal_dirs and defect_dirs"
        raise ValueError(msg)
    skipped: list[str] = []
    rng = np.random.default_rng(cfg.seed)
    normals = [p for d in cfg.normal_dirs for p in list_images(root / d, skipped)]
    order = rng.permutation(len(normals))
    n_test = round(cfg.test_fraction * len(normals))
    n_val = round(cfg.val_fraction * len(normals))
    test_files = [normals[i] for i in sorted(order[:n_test])]
    val_files = [normals[i] for i in sorted(order[n_test : n_test + n_val])]
    train_files = [normals[i] for i in sorted(order[n_test + n_val :])]
    mask_root = root / cfg.mask_dir if cfg.mask_dir else None
    defects = [
        Sample(p, 1, d, _mask_for(mask_root, d, p)) for d in cfg.defect_dirs for p in list_images(root / d, skipped)
    ]
    test = _cap_defects(_normals(test_files) + defects, cfg.max_test_defects, rng)
    return DatasetSplits(cfg.name, "folder", _normals(train_files), _normals(val_files), test, skipped)


def _normals(paths: Iterable[Path]) -> list[Sample]:
    return [Sample(p, 0) for p in paths]


def _cap_defects(test: list[Sample], cap: int | None, rng: np.random.Generator) -> list[Sample]:
    defects = [i for i, s in enumerate(test) if s.label == 1]
    if cap is None or len(defects) <= cap:
        return test
    keep = set(rng.choice(defects, size=cap, replace=False).tolist())
    return [s for i, s in enumerate(test) if s.label == 0 or i in keep]


def load_images(
    samples: Sequence[Sample], spec: PreprocessSpec, skipped: list[str] | None = None
) -> tuple[np.ndarray, list[Sample]]:
    """Prepared uint8 images (N,H,W,C) and the samples kept; unreadable files are logged and skipped."""
    images, kept = [], []
    for sample in samples:
        try:
            images.append(load_prepared(sample.path, spec))
        except ImageDecodeError as err:
            log.warning("skipping unreadable image: %s", err)
            if skipped is not None:
                skipped.append(str(err))
            continue
        kept.append(sample)
    if not images:
        return np.zeros((0, spec.size, spec.size, spec.channels), np.uint8), kept
    return np.stack(images), kept


def load_masks(samples: Sequence[Sample], spec: PreprocessSpec) -> np.ndarray:
    """Boolean ground-truth masks (N,H,W) at the model's resolution; all-False for normal images."""
    masks = np.zeros((len(samples), spec.size, spec.size), bool)
    for i, sample in enumerate(samples):
        if sample.mask_path is not None:
            masks[i] = resize_mask(read_image(sample.mask_path)[:, :, 0], spec.size, spec.resize)
    return masks


def native_side(samples: Sequence[Sample], count: int = 5) -> int:
    """The shorter side in pixels of the first ``count`` readable images (their median); 0 when none reads."""
    sides = []
    for sample in list(samples)[:count]:
        try:
            sides.append(min(read_image(sample.path).shape[:2]))
        except ImageDecodeError:
            continue
    return int(np.median(sides)) if sides else 0

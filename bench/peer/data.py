"""MVTec AD bottle as stored here (512 px PNG, MVTec layout): test split with masks, and timing frames."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def read_rgb(path: Path) -> np.ndarray:
    """One image file as RGB uint8 (H, W, 3)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"{path}: not a decodable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def image_files(folder: Path) -> list[Path]:
    """Image files of a folder, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)


@dataclass(frozen=True)
class TestSplit:
    """The test split: paths, image labels (1 = defective), defect types and ground-truth masks (N, H, W) bool."""

    paths: list[Path]
    labels: np.ndarray
    types: list[str]
    masks: np.ndarray


def test_files(root: Path, limit: int | None = None) -> tuple[list[Path], list[str]]:
    """Test images of ``root`` (an MVTec category folder) sorted by type then name, and their types.

    ``limit`` keeps that many spread evenly over the sorted list (good and every defect type).
    """
    paths: list[Path] = []
    types: list[str] = []
    for type_dir in sorted(p for p in (root / "test").iterdir() if p.is_dir()):
        files = image_files(type_dir)
        paths += files
        types += [type_dir.name] * len(files)
    if limit is not None and limit < len(paths):
        keep = np.unique(np.linspace(0, len(paths) - 1, limit).round().astype(int))
        paths, types = [paths[i] for i in keep], [types[i] for i in keep]
    return paths, types


def load_test_split(root: Path, limit: int | None = None) -> TestSplit:
    """Test images (see :func:`test_files`), labels and masks.

    A defective image's mask is ``ground_truth/<type>/<stem>_mask.png``; a good image's mask is all False.
    """
    paths, types = test_files(root, limit)
    masks = []
    for path, kind in zip(paths, types, strict=True):
        h, w = read_rgb(path).shape[:2]
        if kind == "good":
            masks.append(np.zeros((h, w), bool))
            continue
        mask_path = root / "ground_truth" / kind / f"{path.stem}_mask.png"
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise OSError(f"{mask_path}: missing ground-truth mask")
        masks.append(mask > 0)
    labels = np.array([t != "good" for t in types], dtype=np.int64)
    return TestSplit(paths, labels, types, np.stack(masks))


def timing_frames(root: Path, n: int) -> tuple[list[Path], list[np.ndarray]]:
    """``n`` test images spread evenly over the sorted test split (good and every defect type), decoded once."""
    paths, _ = test_files(root, limit=n)
    return paths, [read_rgb(p) for p in paths]


def train_count(root: Path) -> int:
    """Number of training images (``train/good``)."""
    return len(image_files(root / "train" / "good"))

"""Exploratory statistics of a data set: counts per split and type, sizes, pixel modes, mask coverage."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np

from training.data import DatasetSplits, Sample

_MODES = {1: "gray", 2: "gray+alpha", 3: "rgb", 4: "rgba"}


def _mode(image: np.ndarray) -> str:
    channels = 1 if image.ndim == 2 else image.shape[2]
    depth = "16-bit" if image.dtype == np.uint16 else "8-bit"
    return f"{_MODES.get(channels, f'{channels}ch')} {depth}"


def _probe(path: Path) -> tuple[str, str] | None:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        return None
    h, w = image.shape[:2]
    return f"{w}x{h}", _mode(image)


def _is_grayscale_content(path: Path) -> bool:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        return False
    return bool(np.abs(image.astype(np.int16) - image[:, :, :1]).max() <= 2)


def describe(splits: DatasetSplits) -> str:
    """Markdown report of the data set's statistics."""
    lines = [f"# Data set `{splits.name}` ({splits.layout} layout)", ""]
    lines += ["| split | type | images |", "|---|---|---|"]
    all_samples: list[Sample] = []
    for split_name in ("train", "validation", "test"):
        samples: list[Sample] = getattr(splits, split_name)
        all_samples += samples
        for kind, count in sorted(Counter(s.defect_type for s in samples).items()):
            lines.append(f"| {split_name} | {kind} | {count} |")
    sizes: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    unreadable = []
    for sample in all_samples:
        probe = _probe(sample.path)
        if probe is None:
            unreadable.append(str(sample.path))
            continue
        sizes[probe[0]] += 1
        modes[probe[1]] += 1
    lines += ["", "Image sizes (w x h): " + ", ".join(f"{k}: {v}" for k, v in sizes.most_common())]
    lines.append("Pixel modes: " + ", ".join(f"{k}: {v}" for k, v in modes.most_common()))
    sample_paths = [s.path for s in all_samples[:: max(1, len(all_samples) // 20)]]
    gray = sum(_is_grayscale_content(p) for p in sample_paths)
    lines.append(f"Grayscale content in RGB files: {gray} of {len(sample_paths)} sampled images")
    lines += ["", *_mask_lines(splits.test)]
    problems = {entry.split(": ", 1)[0]: entry for entry in splits.skipped}
    for path in unreadable:
        problems.setdefault(path, f"{path}: not decodable")
    lines += ["", f"Skipped or unreadable files: {len(problems)}", *[f"- {p}" for p in problems.values()]]
    return "\n".join(lines)


def _mask_lines(test: list[Sample]) -> list[str]:
    coverage: dict[str, list[float]] = defaultdict(list)
    missing = 0
    for sample in test:
        if sample.label == 0:
            continue
        if sample.mask_path is None:
            missing += 1
            continue
        mask = cv2.imread(str(sample.mask_path), cv2.IMREAD_GRAYSCALE)
        if mask is not None:
            coverage[sample.defect_type].append(float((mask > 0).mean()))
    if not coverage:
        return [f"Masks: none ({missing} defective test images without a mask)"]
    lines = ["| defect type | masks | mean coverage % | min % | max % |", "|---|---|---|---|---|"]
    for kind, values in sorted(coverage.items()):
        arr = np.array(values) * 100
        lines.append(f"| {kind} | {len(arr)} | {arr.mean():.2f} | {arr.min():.2f} | {arr.max():.2f} |")
    if missing:
        lines.append(f"Defective test images without a mask: {missing}")
    return lines

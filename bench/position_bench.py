"""Would judging each place of the frame against its own normal distances help? A measured lead, not a feature.

The highest-scoring good castings light up at the image border (background, shifted part), not on the part. This
benchmark scales each patch distance by how far normal patches at that grid position lie from the bank, fitted on
normal images only, and compares with the shipped maps:

1. **Test split** (reads test images, to check a principle): each self-configured int8 bundle of
   ``bundles/auto/<set>``; the scale is fitted on the validation normals' distances; image AUROC, pixel AUROC, PRO
   and recall above the k-th highest test normal.
2. **What the search would pick**: the search's own set-up at the chosen geometry (held-out normals and synthetic
   defects, as in training), the scale cross-fitted on two halves of the held-out normals; its objective.

Scales: ``divide`` (distance / position mean x overall mean) and ``attenuate`` (divide only where the position
mean is above the median position: quiet places are never amplified), the position means blurred by ``blur``
cells. Written to ``bench/results/position.md``. Run with ``make bench-position`` after ``make bench-auto``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from edge_agent.bundle import load_bundle
from edge_agent.inspector import backbone_patches
from edge_agent.nn_index import make_index
from edge_agent.preprocess import load_prepared, resize_mask
from edge_agent.runtime import TFLiteModel, limit_blas_threads
from edge_agent.scoring import NearestNeighbourIndex, distance_map, image_score
from training import metrics
from training.config import load_train_config
from training.data import load_dataset

DATASETS = ("bottle", "tire", "casting")
#: (mode, blur) of each row; mode None is the shipped map.
SCALES: tuple[tuple[str | None, int], ...] = ((None, 0), ("divide", 2), ("attenuate", 1), ("attenuate", 2))
TEST_HEADER = (
    "| set | scale | image AUROC | pixel AUROC / PRO | recall above the highest test normal | 2nd | 3rd | 4th |",
    "|---|---|---|---|---|---|---|---|",
)
SEARCH_HEADER = ("| set | scale | synthetic image AUROC | synthetic pixel AUROC | objective |", "|---|---|---|---|---|")


def scale_label(mode: str | None, blur: int) -> str:
    """A row's name: ``shipped`` or the mode and its blur."""
    return f"{mode}, blur {blur}" if mode else "shipped"


def position_scaled(grids: np.ndarray, normal_grids: np.ndarray, mode: str | None, blur: int) -> np.ndarray:
    """Distance grids (N, H, W) scaled by the normal grids' per-position mean (``mode`` None: unchanged)."""
    if mode is None:
        return grids
    mean = normal_grids.mean(axis=0).astype(np.float32)
    mean = cv2.GaussianBlur(mean, (0, 0), blur) if blur else mean
    if mode == "divide":
        return grids / mean * float(mean.mean())
    return grids / np.maximum(1.0, mean / float(np.median(mean)))


def _grids(name: str) -> dict[str, np.ndarray | float | int | None]:
    """Test and validation distance grids of the set's int8 bundle, test labels and masks, map settings."""
    bundle = load_bundle(Path("bundles/auto") / name)
    entry = bundle.models["scorer"]
    params, spec = entry.params, entry.preprocess
    model = TFLiteModel(bundle.path / entry.file, 2)
    whitening = np.load(bundle.path / params.whitening) if params.whitening else None
    index = make_index(np.load(bundle.path / params.memory_bank), 2, whitening)
    data = load_dataset(load_train_config(f"configs/datasets/{name}.yaml").dataset)
    out: dict[str, np.ndarray | float | int | None] = {}
    for split in ("test", "validation"):
        grids = []
        for sample in getattr(data, split):
            patches, grid, _, _ = backbone_patches(
                model, load_prepared(sample.path, spec), spec, params.pool, params.patch_taps
            )
            grids.append(index.distances(patches).reshape(grid))
        out[split] = np.stack(grids)
    out["labels"] = np.array([s.label for s in data.test])
    empty = np.zeros((spec.size, spec.size), bool)
    out["masks"] = np.stack(
        [
            resize_mask(cv2.imread(str(s.mask_path), 0), spec.size, spec.resize) if s.mask_path else empty
            for s in data.test
        ]
    )
    out.update(sigma=params.blur_sigma, top=params.score_top_fraction, size=spec.size)
    return out


def test_rows(name: str) -> list[str]:
    """One table row per scale on the set's test split."""
    g = _grids(name)
    test, val, labels, masks = g["test"], g["validation"], g["labels"], g["masks"]
    rows = []
    for mode, blur in SCALES:
        grids = position_scaled(test, val, mode, blur)
        maps = np.stack([distance_map(d, d.shape, int(g["size"]), float(g["sigma"])) for d in grids])
        scores = np.array([image_score(m, g["top"]) for m in maps])
        normal = np.sort(scores[labels == 0])[::-1]
        recall = [float((scores[labels == 1] > normal[k]).mean()) for k in range(4)]
        pixel = "-"
        if masks.any():
            pixel = f"{metrics.pixel_auroc(masks, maps):.4f} / {metrics.pro_auc(masks, maps):.4f}"
        rows.append(
            f"| {name} | {scale_label(mode, blur)} | {metrics.roc_auc(labels, scores):.4f} | {pixel} | "
            + " | ".join(f"{r:.3f}" for r in recall)
            + " |"
        )
        print(rows[-1], flush=True)
    return rows


def search_rows(name: str) -> list[str]:
    """One table row per scale: the search's objective at its chosen geometry, scale cross-fitted on normals."""
    from training.autoconfig import PIXEL_WEIGHT, SettingsSearch
    from training.search_features import SizeFeatures, evaluate_grids, shrink_masks

    cfg = load_train_config(f"configs/datasets/{name}.yaml")
    chosen = json.loads((Path("runs/auto") / name / "patchcore" / "autoconfig.json").read_text())["chosen"]
    search = SettingsSearch(cfg, load_dataset(cfg.dataset), 900.0)
    size, whiten = chosen["size"], chosen["whiten"]
    held = np.concatenate([search.normals, search.defects])
    features = SizeFeatures(search.pc, chosen["backbone"], size, search.train, held, search.seed)
    ratio = chosen["coreset_ratio"]
    bank = features.bank(tuple(chosen["bank_rotations"]), ratio, ratio, whiten)
    index = NearestNeighbourIndex(bank, threads=2, whitening=features.whitening if whiten else None)
    dist = np.stack([index.distances(p) for p in features.held]).reshape(-1, *features.grid)
    n = len(search.normals)
    half = np.random.default_rng(0).permutation(n) < n // 2
    rows = []
    for mode, blur in SCALES:
        scaled = dist.copy()
        normals = scaled[:n]
        normals[half] = position_scaled(dist[:n][half], dist[:n][~half], mode, blur)
        normals[~half] = position_scaled(dist[:n][~half], dist[:n][half], mode, blur)
        scaled[n:] = position_scaled(dist[n:], dist[:n], mode, blur)
        flat = scaled.reshape(len(scaled), -1)
        maps, pixel = evaluate_grids(
            flat, features.grid, shrink_masks(search.masks, size), n, size, chosen["blur_sigma"]
        )
        auroc = metrics.roc_auc(search.labels, [image_score(m, chosen["score_top_fraction"]) for m in maps])
        rows.append(
            f"| {name} | {scale_label(mode, blur)} | {auroc:.4f} | {pixel:.4f} | {auroc + PIXEL_WEIGHT * pixel:.4f} |"
        )
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Both tables for every set with a self-configured bundle."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sets", nargs="+", default=list(DATASETS))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    limit_blas_threads(2)
    lines = ["# Per-position scaling of patch distances: test split and the search's objective"]
    for header, rows_of in ((TEST_HEADER, test_rows), (SEARCH_HEADER, search_rows)):
        lines += ["", *header]
        for name in args.sets:
            lines += rows_of(name)
    lines += [
        "",
        "Int8 bundles of `bundles/auto`, scale fitted on their validation normals (first table); the search's float "
        "set-up at its chosen geometry, scale cross-fitted on two halves of its held-out normals (second table). "
        "Command: `make bench-position`.",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "position.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

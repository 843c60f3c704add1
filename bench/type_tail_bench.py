"""Could the type head's deeper tap cost less? Macro F1 and int8 tail time of cheaper deep features.

The type head (:mod:`edge_agent.type_head`) pools, besides the scorer's patches, a deeper map: EfficientNet-Lite
stage 7 at stride 32, which the agent gets from the type tail graph (stages 6 and 7, fed by the last patch tap)
for the frames whose type is asked for. After the scorer graph it is the largest cost of an anomalous frame
(``make bench-graph``). This benchmark fits the head on cheaper deep features and times the tails that give them:

- the tail cut after stage 7 (shipped), stage 6 or block 6a, on the whole stride-16 map;
- stage 7 on a crop of the stride-16 map (``cells`` x ``cells`` around the distance map's peak, the deep map
  pooled with the crop's own weights), or on the stride-16 map averaged 2 x 2;
- no tail: the stride-16 tap pooled in the deep map's place; and no deep features at all.

Training chooses between the first row and the no-tail row by the head's own cross-validated F1
(:data:`training.type_head.DEEP_CHOICES`); the other rows are measured leads, not options.

Macro F1 as :mod:`training.type_head` measures it (stratified 5-fold on the test split's defects, 5 repeats, mean),
from float features of the PatchCore run's backbone and bank. Tail time: each tail converted to int8 here
(calibrated on training images' stride-16 maps), median over test frames at 1 and 2 interpreter threads,
interleaved. Written to ``bench/results/type_tail.md``. Run with ``make bench-type-tail`` after ``make bench-auto``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import keras
import numpy as np

from bench.graph_bench import measure
from edge_agent.preprocess import normalise
from edge_agent.runtime import TFLiteModel, limit_blas_threads
from edge_agent.scoring import NearestNeighbourIndex, distance_map, image_score, patch_embedding
from edge_agent.type_head import type_features
from model_export.convert import convert
from training.artifacts import read_calibration
from training.backbones.efficientnet_lite import feature_extractor, tap_layer_names
from training.config import load_train_config
from training.data import load_dataset, load_images
from training.models.patchcore import load_bank
from training.type_head import build_feature_model, cross_validate

DATASETS = ("bottle", "tire")
CALIBRATION_IMAGES = 60
TIMED_FRAMES = 16
ROUNDS = 5


@dataclass(frozen=True)
class Variant:
    """Deep features for the head: ``layer`` of a tail fed the stride-16 map ``mode`` (whole, crop, pooled), or
    none (``layer`` None: ``mode`` tap pools the stride-16 map itself, none pools nothing)."""

    name: str
    layer: str | None
    mode: str
    cells: int = 0


VARIANTS = (
    Variant("stage 7 (a choice of training)", "stage7", "whole"),
    Variant("stage 6", "stage6", "whole"),
    Variant("block 6a", "block6a_project_bn", "whole"),
    Variant("stage 7 on a 12 x 12 crop", "stage7", "crop", 12),
    Variant("stage 7 on a 10 x 10 crop", "stage7", "crop", 10),
    Variant("stage 7 on the map pooled 2 x 2", "stage7", "pooled"),
    Variant("the last patch tap, no tail (a choice of training)", None, "tap"),
    Variant("no deep features", None, "none"),
)


def tail_model(backbone: str, cells: int, layer: str) -> keras.Model:
    """Float tail from the stride-16 stage to ``layer``, for a ``cells`` x ``cells`` stride-16 map."""
    variant = backbone.removeprefix("efficientnet_")
    model = feature_extractor(variant, 16 * cells, "imagenet", taps=("stride16", "stride32"))
    start = tap_layer_names(variant)["stride16"]
    return keras.Model(model.get_layer(start).output, model.get_layer(layer).output, name=f"tail_{layer}_{cells}")


def tail_input(variant: Variant, tap16: np.ndarray, distances: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """The stride-16 map as the variant's tail sees it (whole, the crop around the peak, or pooled 2 x 2)."""
    if variant.mode == "pooled":
        h, w, c = tap16.shape
        return tap16[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2, c).mean(axis=(1, 3))
    if variant.mode == "crop":
        y0, x0 = crop_origin(distances, grid, tap16.shape[:2], variant.cells)
        return tap16[y0 : y0 + variant.cells, x0 : x0 + variant.cells]
    return tap16


def calibration_input(variant: Variant, tap16: np.ndarray) -> np.ndarray:
    """A training image's stride-16 map as the variant's tail sees it; crops are taken at the centre."""
    if variant.mode != "crop":
        return tail_input(variant, tap16, np.zeros(1), (1, 1))
    y0, x0 = ((s - variant.cells) // 2 for s in tap16.shape[:2])
    return tap16[y0 : y0 + variant.cells, x0 : x0 + variant.cells]


def crop_origin(distances: np.ndarray, grid: tuple[int, int], side: tuple[int, int], cells: int) -> tuple[int, int]:
    """Top-left stride-16 cell of the ``cells``-wide window centred on the distance map's peak."""
    small = cv2.resize(distances.reshape(grid), (side[1], side[0]), interpolation=cv2.INTER_AREA)
    py, px = np.unravel_index(int(small.argmax()), small.shape)
    y0 = int(np.clip(py - cells // 2, 0, side[0] - cells))
    x0 = int(np.clip(px - cells // 2, 0, side[1] - cells))
    return y0, x0


def variant_features(
    variant: Variant,
    patches: np.ndarray,
    distances: np.ndarray,
    grid: tuple[int, int],
    tap16: np.ndarray,
    deep: np.ndarray | None,
) -> np.ndarray:
    """The head's features with the variant's deep part (``deep``: the tail's float output, or None)."""
    if variant.mode == "none":
        full = type_features(patches, distances, grid, tap16)
        return np.concatenate([full[: patches.shape[1]], full[-3:]])
    if variant.mode == "tap":
        return type_features(patches, distances, grid, tap16)
    if deep is None:
        raise ValueError(f"{variant.name}: needs its tail's output")
    if variant.mode != "crop":
        return type_features(patches, distances, grid, deep)
    # the crop's deep map, pooled with the distance map's weights inside the crop (median of the whole map)
    full = type_features(patches, distances, grid, deep)
    side = tap16.shape[:2]
    y0, x0 = crop_origin(distances, grid, side, variant.cells)
    f = grid[0] // side[0]
    sub = distances.reshape(grid)[f * y0 : f * (y0 + variant.cells), f * x0 : f * (x0 + variant.cells)]
    weights = cv2.resize(sub, (deep.shape[1], deep.shape[0]), interpolation=cv2.INTER_AREA)
    whole = cv2.resize(distances.reshape(grid), (side[1] // 2, side[0] // 2), interpolation=cv2.INTER_AREA)
    above = np.maximum(weights - np.median(whole), 0.0)
    above /= max(float(above.sum()), 1e-12)
    pooled = np.tensordot(above, deep, axes=([0, 1], [0, 1]))
    return np.concatenate([full[: patches.shape[1]], pooled, full[-3:]]).astype(np.float32)


def tail_ms(tails: dict[str, tuple[keras.Model, list[np.ndarray], list[np.ndarray]]]) -> dict[str, tuple[float, float]]:
    """Median ms of each int8 tail at 1 and 2 threads: (model, calibration inputs, timed inputs), interleaved."""
    graphs = {name: convert(model, "int8", np.stack(calib)) for name, (model, calib, _) in tails.items()}
    out: dict[str, list[float]] = {name: [] for name in tails}
    for threads in (1, 2):
        models = {name: TFLiteModel(graph, threads) for name, graph in graphs.items()}
        calls: dict[str, Callable[[int], object]] = {
            name: lambda i, m=model, x=tails[name][2]: m(x[i % len(x)][None]) for name, model in models.items()
        }
        for name, ms in measure(calls, TIMED_FRAMES, ROUNDS).items():
            out[name].append(ms)
    return {name: (v[0], v[1]) for name, v in out.items()}


def set_rows(name: str, run: Path) -> list[str]:
    """One row per variant for one data set's PatchCore run."""
    patchcore = run / "patchcore"
    splits = load_dataset(load_train_config(f"configs/datasets/{name}.yaml").dataset)
    params = read_calibration(patchcore)
    backbone = params["settings"]["backbone"]
    model, spec = build_feature_model(patchcore)  # patch taps + stride 32; the stride-16 tap is the last patch tap
    bank, whitening = load_bank(patchcore)
    index = NearestNeighbourIndex(bank, threads=2, whitening=whitening)
    images, kept = load_images(splits.test, spec, splits.skipped)
    side = spec.size // 16
    models = {
        v.name: tail_model(backbone, v.cells or (side // 2 if v.mode == "pooled" else side), v.layer)
        for v in VARIANTS
        if v.layer
    }
    features: dict[str, list[np.ndarray]] = {v.name: [] for v in VARIANTS}
    timed: dict[str, list[np.ndarray]] = {v.name: [] for v in VARIANTS if v.layer}
    scores = []
    for start in range(0, len(images), 8):
        outputs = [np.asarray(o) for o in model(normalise(images[start : start + 8], spec), training=False)]
        for j in range(len(outputs[0])):
            *taps, _ = (o[j] for o in outputs)
            patches = patch_embedding(taps, int(params["pool"]))
            distances = index.distances(patches)
            grid = taps[0].shape[:2]
            amap = distance_map(distances, grid, spec.size, params["blur_sigma"])
            scores.append(image_score(amap, params["score_top_fraction"]))
            for v in VARIANTS:
                x = tail_input(v, taps[-1], distances, grid)
                deep = np.asarray(models[v.name](x[None], training=False))[0] if v.layer else None
                features[v.name].append(variant_features(v, patches, distances, grid, taps[-1], deep))
                if v.layer and len(timed[v.name]) < TIMED_FRAMES:
                    timed[v.name].append(x)
    types = np.array([splits.defect_types.index(s.defect_type) if s.label == 1 else -1 for s in kept])
    anomalous = np.array(scores) >= params["threshold"]
    calib_images, _ = load_images(splits.train[:CALIBRATION_IMAGES], spec, splits.skipped)
    calib16 = [
        np.asarray(model(normalise(im[None], spec), training=False)[len(params["taps"]) - 1])[0] for im in calib_images
    ]
    tails = {}
    for v in VARIANTS:
        if v.layer:
            tails[v.name] = (models[v.name], [calibration_input(v, t) for t in calib16], timed[v.name])
    ms = tail_ms(tails)
    rows = []
    for v in VARIANTS:
        cv = cross_validate(np.stack(features[v.name]), types, len(splits.defect_types), anomalous, 5)
        times = " | ".join(f"{t:.2f}" for t in ms[v.name]) if v.name in ms else "- | -"
        rows.append(f"| {name} | {v.name} | {cv['macro_f1']:.3f} | {cv['types_macro_f1']:.3f} | {times} |")
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    """The table for every set with a PatchCore run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(DATASETS))
    parser.add_argument("--runs", type=Path, default=Path("runs/auto"), help="folder of <set>/patchcore runs")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    limit_blas_threads(2)
    lines = [
        "# Type head: cheaper deep features than the stage-7 tail",
        "",
        "| set | deep features | macro F1, line | macro F1, types alone | tail ms, 1 thread | 2 threads |",
        "|---|---|---|---|---|---|",
    ]
    for name in args.sets:
        lines += set_rows(name, args.runs / name)
    lines += [
        "",
        f"Float features of `{args.runs}/<set>/patchcore` (backbone and bank); macro F1: stratified 5-fold x 5 "
        f"repeats (mean), as the type head is evaluated. Tails: int8, calibrated on {CALIBRATION_IMAGES} training "
        f"images' stride-16 maps; median of {TIMED_FRAMES} test frames x {ROUNDS} rounds, interleaved (-: no tail). "
        "Command: `make bench-type-tail`.",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "type_tail.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

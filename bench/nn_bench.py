"""Nearest-neighbour search: exact against the clustered index (``edge_agent.nn_index``) on a real bundle's bank.

Every test image of the data set goes through the bundle's int8 graph once; its patches are searched by the exact
index, the clustered one as the agent runs it (two passes, the bundle's first-pass probe) and the same with the
earlier first pass over 2 cells, interleaved image by image, at 1 and 2 threads. Printed and written to
``bench/results/nn_search.md``: median search time per frame, the recall of the clustered searches (share of query
patches whose distance equals the exact one), the largest relative distance error, and the image AUROC of the
bundle's own score rule with each search. Run with ``make bench-nn`` (casting at its chosen settings by default).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge_agent.bundle import Bundle, load_bundle
from edge_agent.inspector import Inspector, PatchCoreTFLite, backbone_patches
from edge_agent.manifest import PatchCoreParams
from edge_agent.nn_index import EXACT_MAX_ROWS, REFINE_MIN, REFINE_SHARE, ClusteredIndex
from edge_agent.preprocess import prepare, read_image
from edge_agent.runtime import TFLiteModel, limit_blas_threads
from edge_agent.scoring import NearestNeighbourIndex, distance_map, image_score
from training.config import load_train_config
from training.data import Sample, load_dataset
from training.metrics import roc_auc

#: The first pass's cells before bundles recorded their own (``search_probe``), compared in every table.
EARLIER_PROBE = 2


def timed(fn: Callable[[np.ndarray], np.ndarray], queries: np.ndarray) -> tuple[np.ndarray, float]:
    """(result, seconds) of one search."""
    started = time.perf_counter()
    result = fn(queries)
    return result, time.perf_counter() - started


def whitening(bundle: Bundle) -> np.ndarray | None:
    """The scorer's whitening matrix (None when its bank is not whitened)."""
    params = bundle.models["scorer"].params
    assert isinstance(params, PatchCoreParams)
    return np.load(bundle.path / params.whitening) if params.whitening else None


def whole_frames(bundle: Bundle, samples: list[Sample]) -> dict[str, float]:
    """Median ms per ``Inspector.inspect`` with the agent's search and with the earlier first pass over
    :data:`EARLIER_PROBE` cells, interleaved. The exact search is left out here: its 0.1-0.2 s a frame stream the
    whole bank through the caches, which slowed the frame after it by about 2.7 ms (22.2 against 19.5 ms)."""
    agent, earlier = (Inspector(bundle, threads=2) for _ in range(2))
    params = earlier.entry.params
    assert isinstance(params, PatchCoreParams) and isinstance(earlier.scorer, PatchCoreTFLite)
    bank, white = np.load(bundle.path / params.memory_bank), whitening(bundle)
    earlier.scorer.index = ClusteredIndex(bank, 2, probe=EARLIER_PROBE, whitening=white)
    images = [read_image(s.path) for s in samples]
    inspectors = {"clustered": agent, "earlier": earlier}
    times: dict[str, list[float]] = {kind: [] for kind in inspectors}
    for image in images[:3]:  # warm-up
        for inspector in inspectors.values():
            inspector.inspect(image)
    for image in images:
        for kind, inspector in inspectors.items():
            started = time.perf_counter()
            inspector.inspect(image)
            times[kind].append(time.perf_counter() - started)
    return {kind: statistics.median(v) * 1e3 for kind, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and write its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("bundles/auto/casting"))
    parser.add_argument("--config", type=Path, default=Path("configs/datasets/casting.yaml"))
    parser.add_argument(
        "--limit", type=int, default=0, help="about this many test images, spread over the split (0: all)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/nn_search.md"))
    args = parser.parse_args(argv)
    limit_blas_threads(1)  # as the agent's Inspector does: the index's own threads split the queries
    bundle = load_bundle(args.bundle)
    entry = bundle.models["scorer"]
    params = entry.params
    assert isinstance(params, PatchCoreParams)
    bank, white = np.load(bundle.path / params.memory_bank), whitening(bundle)
    model = TFLiteModel(bundle.path / entry.file, 2)
    samples = load_dataset(load_train_config(args.config).dataset).test
    samples = samples[:: max(1, len(samples) // args.limit)] if args.limit else samples  # spread over the kinds
    started = time.perf_counter()
    kinds = ("exact", "clustered", "earlier")
    indexes = {
        threads: {
            "exact": NearestNeighbourIndex(bank, threads, whitening=white),
            "clustered": ClusteredIndex(bank, threads, probe=params.search_probe, whitening=white),
            "earlier": ClusteredIndex(bank, threads, probe=EARLIER_PROBE, whitening=white),
        }
        for threads in (1, 2)
    }
    build_seconds = (time.perf_counter() - started) / 4
    times: dict[str, list[float]] = {f"{kind} {t}": [] for kind in kinds for t in (1, 2)}
    scores: dict[str, list[float]] = {kind: [] for kind in kinds}
    same = {kind: 0 for kind in kinds[1:]}
    worst = {kind: 0.0 for kind in kinds[1:]}
    total = 0
    for sample in samples:
        image = prepare(read_image(sample.path), entry.preprocess)
        patches, grid, _, _ = backbone_patches(model, image, entry.preprocess, params.pool, params.patch_taps)
        found: dict[str, np.ndarray] = {}
        for threads, by_kind in indexes.items():
            for kind, index in by_kind.items():
                found[kind], seconds = timed(index.distances, patches)
                times[f"{kind} {threads}"].append(seconds)
        total += len(patches)
        for kind in kinds[1:]:
            same[kind] += int(np.sum(found[kind] <= found["exact"] * (1 + 1e-5) + 1e-6))
            error = (found[kind] - found["exact"]) / np.maximum(found["exact"], 1e-6)
            worst[kind] = max(worst[kind], float(np.max(error)))
        for kind in kinds:
            amap = distance_map(found[kind], grid, entry.preprocess.size, params.blur_sigma)
            scores[kind].append(image_score(amap, params.score_top_fraction))
    frame_ms = whole_frames(bundle, samples[::9])
    labels = np.array([s.label for s in samples])
    auroc = {kind: roc_auc(labels, np.array(v)) for kind, v in scores.items()}
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    clustered = indexes[1]["clustered"]
    assert isinstance(clustered, ClusteredIndex)
    lines = [
        "# Nearest-neighbour search: exact vs clustered (inverted file)",
        "",
        f"`make bench-nn`: bundle `{args.bundle}` ({bundle.version}), bank {len(bank)} x {bank.shape[1]}, "
        f"{entry.preprocess.size} px, {len(patches)} query patches a frame, {len(samples)} test images of "
        f"`{args.config}`; clustered: {len(clustered.cells_aug)} k-means cells (built in {build_seconds:.2f} s), "
        f"the agent's search probes {clustered.probe} for every patch, then {clustered.refine_probe} for the "
        f"{REFINE_SHARE:.4g} of a frame's patches with the largest distances (at least {REFINE_MIN}); the earlier "
        f"default probed {EARLIER_PROBE} in its first pass. Median over frames, interleaved frame by frame.",
        "",
        "| search | ms/frame, 1 thread | ms/frame, 2 threads | image AUROC | patches with the exact distance | "
        "largest relative distance error |",
        "|---|---|---|---|---|---|",
        f"| exact (float32) | {ms['exact 1']:.1f} | {ms['exact 2']:.1f} | {auroc['exact']:.4f} | 1 | 0 |",
        *(
            f"| {name} | {ms[kind + ' 1']:.1f} | {ms[kind + ' 2']:.1f} | {auroc[kind]:.4f} | "
            f"{same[kind] / total:.4f} | {worst[kind]:.3f} |"
            for kind, name in (
                ("clustered", f"clustered, two passes, first over {clustered.probe} cell(s) (the agent's)"),
                ("earlier", f"clustered, two passes, first over {EARLIER_PROBE} cells (the earlier default)"),
            )
        ),
        f"| ratio exact / two passes | {ms['exact 1'] / ms['clustered 1']:.1f}x | "
        f"{ms['exact 2'] / ms['clustered 2']:.1f}x | | | |",
        f"| ratio earlier / agent's | {ms['earlier 1'] / ms['clustered 1']:.2f}x | "
        f"{ms['earlier 2'] / ms['clustered 2']:.2f}x | | | |",
        "",
        f"{total} query patches in all.",
        "",
        f"Whole frame (`Inspector.inspect`: decoded image -> score, map, verdict fields; 2 interpreter threads), "
        f"{len(samples[::9])} frames, interleaved: median {frame_ms['clustered']:.1f} ms with the agent's search "
        f"(clustered above {EXACT_MAX_ROWS} rows), {frame_ms['earlier']:.1f} ms with the earlier first pass "
        f"({frame_ms['earlier'] / frame_ms['clustered']:.2f}x).",
        "",
    ]
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

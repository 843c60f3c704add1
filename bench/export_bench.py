"""Export benchmark: model size float vs int8, single-image latency, throughput on both cores, AUROC float vs int8.

For each data set it exports the trained run (``runs/bench/<dataset>``, made by ``bench.train_bench``) to
int8 bundles (PatchCore + classifier, and the autoencoder), then times the edge path with the TFLite
interpreter, against the float Keras path in the same command. Run with ``make bench-export``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.bundle import load_bundle
from edge_agent.inspector import Inspector
from edge_agent.preprocess import read_image
from training.config import load_train_config
from training.data import load_dataset

WARMUP = 10


def _percentiles(samples: list[float]) -> tuple[float, float]:
    arr = np.array(samples) * 1000
    return float(np.median(arr)), float(np.percentile(arr, 99))


def time_inspector(bundle: Path, images: list[np.ndarray], threads: int, classify_all: bool) -> list[float]:
    """Seconds per image of Inspector.inspect (pre-processing, graph, score maths, classifier)."""
    inspector = Inspector(load_bundle(bundle), threads=threads)
    for image in images[:WARMUP]:
        inspector.inspect(image, classify_all)
    out = []
    for image in images:
        t0 = time.perf_counter()
        inspector.inspect(image, classify_all)
        out.append(time.perf_counter() - t0)
    return out


def _worker(args: tuple[str, list[str], bool]) -> tuple[int, float]:
    bundle, paths, classify_all = args
    images = [read_image(p) for p in paths]
    inspector = Inspector(load_bundle(bundle), threads=1)
    for image in images[:WARMUP]:
        inspector.inspect(image, classify_all)
    t0 = time.perf_counter()
    for image in images:
        inspector.inspect(image, classify_all)
    return len(images), time.perf_counter() - t0


def throughput(bundle: Path, paths: list[str], processes: int, classify_all: bool) -> float:
    """Images/s with ``processes`` single-threaded workers scoring their share in parallel."""
    shares = [paths[i::processes] for i in range(processes)]
    with mp.get_context("spawn").Pool(processes) as pool:
        results = pool.map(_worker, [(str(bundle), share, classify_all) for share in shares])
    return sum(n for n, _ in results) / max(seconds for _, seconds in results)


def float_keras_latency(run_dir: Path, images: list[np.ndarray]) -> list[float]:
    """Seconds per image of the float Keras PatchCore path (the baseline of the ratio)."""
    import keras

    from edge_agent.preprocess import PreprocessSpec, prepare
    from training.artifacts import read_calibration, read_json
    from training.models.patchcore import PatchCoreScorer, load_bank
    from training.train_anomaly import keras_forward

    folder = run_dir / "patchcore"
    spec = PreprocessSpec.from_dict(read_json(folder / "preprocess.json"))
    params = read_calibration(folder)
    scorer = PatchCoreScorer(
        keras_forward(keras.models.load_model(folder / "backbone.keras")),
        spec,
        params["blur_sigma"],
        params["pool"],
        params.get("score_top_fraction"),
    )
    scorer.set_bank(*load_bank(folder))
    out = []
    for i, image in enumerate(images):
        t0 = time.perf_counter()
        scorer.score(prepare(image, spec)[None])
        if i >= WARMUP:
            out.append(time.perf_counter() - t0)
    return out


def bench_dataset(name: str, runs: Path, bundles: Path, n_images: int) -> dict[str, Any]:
    """Export the run of one data set and measure it."""
    from model_export.export import ParityError, export_bundle

    cfg = load_train_config(f"configs/datasets/{name}.yaml")
    run_dir = runs / name
    scorer_bundle = bundles / f"{name}-patchcore"
    ae_bundle = bundles / f"{name}-autoencoder"
    refused = []
    try:
        pc = export_bundle(run_dir, cfg, scorer_bundle, "int8", "patchcore", "classifier-transfer")
    except ParityError as err:
        if err.model != "classifier":
            raise
        refused.append(f"{err}: the bundle ships the scorer alone")
        pc = export_bundle(run_dir, cfg, scorer_bundle, "int8", "patchcore", None)
    ae = export_bundle(run_dir, cfg, ae_bundle, "int8", "autoencoder", None)
    splits = load_dataset(cfg.dataset)
    paths = [str(s.path) for s in splits.test][:n_images]
    images = [read_image(p) for p in paths]
    has_classifier = "classifier" in pc.figures
    row: dict[str, Any] = {"dataset": name, "figures": {"patchcore": pc.figures, "autoencoder": ae.figures["scorer"]}}
    row["refused"] = refused
    row["patchcore_ms"] = _percentiles(time_inspector(scorer_bundle, images, 2, False))
    if has_classifier:
        row["patchcore_classifier_ms"] = _percentiles(time_inspector(scorer_bundle, images, 2, True))
    row["autoencoder_ms"] = _percentiles(time_inspector(ae_bundle, images, 2, False))
    row["float_patchcore_ms"] = _percentiles(float_keras_latency(run_dir, images))
    row["images_per_s_1proc_2threads"] = 1000.0 / row.get("patchcore_classifier_ms", row["patchcore_ms"])[0]
    row["images_per_s_2proc"] = throughput(scorer_bundle, paths, 2, has_classifier)
    row["resolution"] = json.loads((scorer_bundle / "manifest.json").read_text())["models"]["scorer"]["input"]["shape"]
    return row


def _model_row(
    dataset: str,
    model: str,
    f: dict[str, Any],
    latency: tuple[float, float],
    base: float | None,
    head: dict[str, Any] | None = None,
) -> str:
    med, p99 = latency
    size = f"{f['size_float_bytes'] / 1024:.0f} -> {f['size_export_bytes'] / 1024:.0f}"
    if head is not None and f.get("graph") == "shared with the classifier":  # float32 weights of the fused graph
        size = f"{f['size_float_bytes'] / 1024:.0f} (backbone + classifier) -> {f['size_export_bytes'] / 1024:.0f}"
    quality = f"{f['auroc_float']:.3f} | {f['auroc_export']:.3f} | {f['map_correlation']:.3f}"
    ratio = f"{base:.1f} | {base / med:.1f}x" if base else "- | -"
    return f"| {dataset} | {model} | {size} | {quality} | {med:.1f} / {p99:.1f} | {ratio} |"


def _refusals(row: dict[str, Any]) -> list[tuple[str, str]]:
    return [(row["dataset"], text) for text in row.get("refused", [])]


def markdown(rows: list[dict[str, Any]]) -> str:
    """The export tables: sizes, quality and latency per model; throughput per data set."""
    lines = [
        "| data set | model | size float -> int8 (KiB) | AUROC float | AUROC int8 | map corr | "
        "latency int8 median / p99 (ms) | float Keras median (ms) | speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        name = row["dataset"]
        lines.append(
            _model_row(
                name,
                "patchcore",
                row["figures"]["patchcore"]["scorer"],
                row["patchcore_ms"],
                row["float_patchcore_ms"][0],
                row["figures"]["patchcore"].get("classifier"),
            )
        )
        lines.append(_model_row(name, "autoencoder", row["figures"]["autoencoder"], row["autoencoder_ms"], None))
        if "patchcore_classifier_ms" in row:
            med, p99 = row["patchcore_classifier_ms"]
            classifier = row["figures"]["patchcore"]["classifier"]
            size = "one graph (head on the backbone)"
            if classifier.get("graph") != "shared with the scorer":
                size = f"+ {classifier['size_export_bytes'] / 1024:.0f}"
            lines.append(
                f"| {name} | patchcore + classifier, end to end | {size} | - | - | - | {med:.1f} / {p99:.1f} | - | - |"
            )
    lines += [f"\nRefused by the parity gate: {name}: {text}" for row in rows for name, text in _refusals(row)]
    lines += ["", "| data set | images/s, 1 process x 2 threads | images/s, 2 processes x 1 thread | input |"]
    lines.append("|---|---|---|---|")
    for row in rows:
        lines.append(
            f"| {row['dataset']} | {row['images_per_s_1proc_2threads']:.0f} | {row['images_per_s_2proc']:.0f} | "
            f"{row['resolution']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the export benchmark and write ``<out>/export.md``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=Path, default=Path("runs/bench"))
    parser.add_argument("--bundles", type=Path, default=Path("bundles/bench"))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--datasets", default="bottle,tire,casting")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--render", action="store_true", help="only rewrite export.md from the last export.json")
    args = parser.parse_args(argv)
    if args.render:
        rows = json.loads((args.out / "export.json").read_text(encoding="utf-8"))
    else:
        rows = [bench_dataset(name, args.runs, args.bundles, args.images) for name in args.datasets.split(",")]
    text = markdown(rows) + f"\n\nMeasured on {os.cpu_count()} CPU cores; latency = batch 1, after {WARMUP} warm-up "
    text += "images, median and p99 over the data set's test images. Command: `make bench-export`.\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "export.md").write_text(text, encoding="utf-8")
    (args.out / "export.json").write_text(json.dumps(rows, indent=2, default=float), encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

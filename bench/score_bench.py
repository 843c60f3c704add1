"""Image score by the top-fraction rule: a partition of the whole map against ``edge_agent.scoring.largest``.

Times the score alone on the bundle's own maps and the whole frame (``Inspector.inspect`` with either), interleaved
frame by frame, on casting's bundle by default (its chosen rule is the mean of the top 1 %). Run with
``make bench-score`` (after ``make bench-auto``); writes ``bench/results/score.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import edge_agent.inspector as inspector_module
from edge_agent.bundle import load_bundle
from edge_agent.preprocess import read_image
from edge_agent.scoring import image_score
from training.config import load_train_config
from training.data import load_dataset


def whole_map_score(anomaly_map: np.ndarray, top_fraction: float | None = None) -> float:
    """The earlier rule: a partition of the whole map."""
    if not top_fraction:
        return float(anomaly_map.max())
    flat = anomaly_map.ravel()
    k = max(1, round(top_fraction * flat.size))
    return float(np.partition(flat, flat.size - k)[flat.size - k :].mean())


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and write the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, default=Path("bundles/auto/casting"))
    parser.add_argument("--config", type=Path, default=Path("configs/datasets/casting.yaml"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/score.md"))
    args = parser.parse_args(argv)
    bundle = load_bundle(args.bundle)
    inspector = inspector_module.Inspector(bundle, threads=2)
    entry = bundle.models["scorer"]
    top = getattr(entry.params, "score_top_fraction", None) or 0.01
    samples = load_dataset(load_train_config(args.config).dataset).test[::9]
    frames = [read_image(s.path) for s in samples]
    rules: dict[str, Callable[..., float]] = {"whole-map partition": whole_map_score, "largest()": image_score}
    frame_ms: dict[str, list[float]] = {name: [] for name in rules}
    score_ms: dict[str, list[float]] = {name: [] for name in rules}
    largest_gap = 0.0
    for frame in frames[:3]:
        inspector.inspect(frame)
    for round_ in range(args.rounds):
        for i, frame in enumerate(frames):
            names = list(rules) if (i + round_) % 2 else list(rules)[::-1]
            for name in names:
                inspector_module.image_score = rules[name]
                started = time.perf_counter()
                result = inspector.inspect(frame)
                frame_ms[name].append((time.perf_counter() - started) * 1e3)
            amap = np.asarray(result.anomaly_map, np.float32)
            scores = {}
            for name in names:
                started = time.perf_counter()
                scores[name] = rules[name](amap, top)
                score_ms[name].append((time.perf_counter() - started) * 1e3)
            largest_gap = max(largest_gap, abs(scores["largest()"] - scores["whole-map partition"]))
    inspector_module.image_score = image_score
    med = {name: (statistics.median(score_ms[name]), statistics.median(frame_ms[name])) for name in rules}
    base = med["whole-map partition"]
    lines = [
        "| image score | score ms (median) | whole frame ms (median) | frame ratio to the whole-map partition |",
        "|---|---|---|---|",
        *(f"| {n} | {s:.3f} | {f:.2f} | {base[1] / f:.3f}x |" for n, (s, f) in med.items()),
        "",
        f"Bundle `{args.bundle}` ({entry.preprocess.size} px, mean of the top {top:.0%}), "
        f"{len(frames)} test frames x {args.rounds} rounds, the two rules interleaved frame by frame (order "
        f"alternating); `Inspector.inspect` with 2 interpreter threads. Largest score difference {largest_gap:.2e} "
        "(the same values; the earlier rule averages them in float32, largest() in float64). "
        "Command: `make bench-score`.",
    ]
    text = "\n".join(lines) + "\n"
    args.out.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

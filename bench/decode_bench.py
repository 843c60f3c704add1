"""Reduced JPEG decoding: decode + pre-process time of camera-sized JPEG frames, full decode against reduced.

Real bottle test images (MVTec AD bottle, 512 px PNG) enlarged to two camera sizes and stored as JPEG (quality
90), held in memory; each frame is decoded and prepared for a 320 px model both ways, interleaved frame by frame
(medians over frames and rounds). Also the mean absolute difference of the two prepared images (grey levels of
255). Written to ``bench/results/decode.md``. Run with ``make bench-decode``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from bench.train_bench import environment
from edge_agent.preprocess import PreprocessSpec, decode_image, jpeg_reduction, prepare
from training.config import datasets_root

CAMERAS = ((1280, 1024), (2448, 2048))
MODEL_SIDE = 320
ROUNDS = 3


def camera_frames(width: int, height: int, limit: int) -> list[bytes]:
    """Bottle test images enlarged to ``width`` x ``height`` and encoded as JPEG."""
    paths = sorted((datasets_root() / "mvtec_ad" / "bottle" / "test").rglob("*.png"))[:limit]
    frames = []
    for path in paths:
        big = cv2.resize(cv2.imread(str(path)), (width, height), interpolation=cv2.INTER_CUBIC)
        frames.append(cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return frames


def measure(frames: list[bytes], spec: PreprocessSpec) -> dict[str, float]:
    """Median ms per frame of full and reduced decode + prepare, and the prepared images' mean difference."""
    full_ms: list[float] = []
    reduced_ms: list[float] = []
    diffs = []
    for _ in range(ROUNDS):
        for data in frames:
            t0 = time.perf_counter()
            full = prepare(decode_image(data), spec)
            t1 = time.perf_counter()
            reduced = prepare(decode_image(data, min_side=spec.size), spec)
            t2 = time.perf_counter()
            full_ms.append((t1 - t0) * 1e3)
            reduced_ms.append((t2 - t1) * 1e3)
            diffs.append(float(np.abs(full.astype(np.float32) - reduced).mean()))
    return {
        "full": statistics.median(full_ms),
        "reduced": statistics.median(reduced_ms),
        "diff": statistics.mean(diffs),
        "factor": jpeg_reduction(frames[0], spec.size),
    }


def main(argv: list[str] | None = None) -> int:
    """Measure every camera size and write the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--frames", type=int, default=40)
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    spec = PreprocessSpec(MODEL_SIDE, "rgb")
    lines = [
        "| camera frame (JPEG q90) | decoded at | full decode + prepare ms | reduced decode + prepare ms | ratio "
        "| mean abs difference of the prepared images |",
        "|---|---|---|---|---|---|",
    ]
    for width, height in CAMERAS:
        frames = camera_frames(width, height, args.frames)
        r = measure(frames, spec)
        k = int(r["factor"])
        lines.append(
            f"| {width}x{height} | 1/{k} ({-(-width // k)}x{-(-height // k)}) | {r['full']:.2f} | {r['reduced']:.2f} "
            f"| {r['full'] / r['reduced']:.2f}x | {r['diff']:.2f} |"
        )
    text = "\n".join(lines) + (
        f"\n\n{args.frames} MVTec AD bottle test images enlarged to each size, in memory; prepared for a "
        f"{MODEL_SIDE} px model (stretch, area resize); one OpenCV thread; {ROUNDS} rounds, interleaved frame by "
        f"frame, medians. {environment()} Command: `make bench-decode`.\n"
    )
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

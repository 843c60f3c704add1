"""Decoding: camera-sized JPEG frames decoded full against reduced; PNG frames by libspng against OpenCV.

Real bottle test images (MVTec AD bottle, 512 px PNG) enlarged to two camera sizes and stored as JPEG (quality
90), held in memory; each frame is decoded and prepared for a 320 px model both ways, interleaved frame by frame
(medians over frames and rounds). Also the mean absolute difference of the two prepared images (grey levels of
255). PNG: bottle test images as stored (512 px RGB), enlarged to a camera size, and as 8-bit gray, decoded to
RGB by the agent's path (libspng for 8-bit RGB) and by OpenCV alone, interleaved; the two must give equal
pixels. Written to ``bench/results/decode.md``. Run with ``make bench-decode``.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from bench.train_bench import environment
from edge_agent import preprocess
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


def png_frames(limit: int) -> dict[str, list[bytes]]:
    """Bottle test images as PNG: as stored, enlarged to 1280x1024, and as 8-bit gray."""
    paths = sorted((datasets_root() / "mvtec_ad" / "bottle" / "test").rglob("*.png"))[:limit]
    images = [cv2.imread(str(path)) for path in paths]

    def encoded(items: list[np.ndarray]) -> list[bytes]:
        return [cv2.imencode(".png", item)[1].tobytes() for item in items]

    return {
        "512x512 RGB (as stored)": [path.read_bytes() for path in paths],
        "1280x1024 RGB": encoded([cv2.resize(i, (1280, 1024), interpolation=cv2.INTER_CUBIC) for i in images]),
        "512x512 gray": encoded([cv2.cvtColor(i, cv2.COLOR_BGR2GRAY) for i in images]),
    }


def measure_png(frames: list[bytes]) -> tuple[float, float]:
    """Median ms per frame of the agent's decode (libspng) and OpenCV's, interleaved; asserts equal pixels."""
    agent_ms: list[float] = []
    opencv_ms: list[float] = []
    libspng = preprocess.spng_decode
    try:
        for _ in range(ROUNDS):
            for data in frames:
                preprocess.spng_decode = libspng
                t0 = time.perf_counter()
                fast = decode_image(data)
                t1 = time.perf_counter()
                preprocess.spng_decode = None
                t2 = time.perf_counter()
                slow = decode_image(data)
                t3 = time.perf_counter()
                agent_ms.append((t1 - t0) * 1e3)
                opencv_ms.append((t3 - t2) * 1e3)
                if not np.array_equal(fast, slow):
                    raise AssertionError("libspng and OpenCV decoded a PNG differently")
    finally:
        preprocess.spng_decode = libspng
    return statistics.median(agent_ms), statistics.median(opencv_ms)


def two_threads_png(frames: list[bytes], use_libspng: bool) -> float:
    """Wall ms a frame with two threads decoding half the frames each (the agent's two scoring workers): a
    decoder that holds the GIL gains nothing from the second thread."""
    libspng = preprocess.spng_decode
    preprocess.spng_decode = libspng if use_libspng else None
    try:
        best = float("inf")
        for _ in range(ROUNDS):
            threads = [
                threading.Thread(target=lambda part=part: [decode_image(d) for d in part])
                for part in (frames[0::2], frames[1::2])
            ]
            t0 = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            best = min(best, (time.perf_counter() - t0) * 1e3 / len(frames))
    finally:
        preprocess.spng_decode = libspng
    return best


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
    lines += [
        "",
        "| PNG frame | agent's decode ms (libspng for 8-bit RGB, else OpenCV) | OpenCV alone ms | ratio | pixels "
        "| 2 threads, wall ms a frame: agent's / OpenCV alone |",
        "|---|---|---|---|---|---|",
    ]
    for name, pngs in png_frames(args.frames).items():
        fast, slow = measure_png(pngs)
        both = f"{two_threads_png(pngs, True):.2f} / {two_threads_png(pngs, False):.2f}"
        lines.append(f"| {name} | {fast:.2f} | {slow:.2f} | {slow / fast:.2f}x | equal | {both} |")
    text = "\n".join(lines) + (
        f"\n\n{args.frames} MVTec AD bottle test images enlarged to each size, in memory; prepared for a "
        f"{MODEL_SIDE} px model (stretch, area resize); one OpenCV thread; {ROUNDS} rounds, interleaved frame by "
        f"frame, medians. PNG rows: decode to RGB only; two threads: best of {ROUNDS} rounds. {environment()} "
        "Command: `make bench-decode`.\n"
    )
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

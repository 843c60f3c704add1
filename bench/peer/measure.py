"""Quality (one metric implementation for every contender), interleaved latency, and RSS / start-up probes."""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import numpy as np

from bench.peer.contenders import Runner, Spec, load
from bench.peer.data import TestSplit, read_rgb

REPO = Path(__file__).resolve().parents[2]


def metrics_module() -> ModuleType:
    """linewatch's ``training/metrics.py`` (numpy + OpenCV); loaded by path if the package import would pull TF."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    before = set(sys.modules)
    import training.metrics as metrics

    if any(m.split(".")[0] == "tensorflow" for m in set(sys.modules) - before):  # pragma: no cover - guard
        spec = importlib.util.spec_from_file_location("linewatch_metrics", REPO / "training" / "metrics.py")
        if spec is None or spec.loader is None:
            raise ImportError("training/metrics.py not loadable")
        metrics = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(metrics)
    return metrics


def quality(runner: Runner, split: TestSplit, images: list[np.ndarray]) -> dict[str, float]:
    """Image AUROC, pixel AUROC (every pixel) and PRO (FPR <= 0.3) with maps resized to the mask resolution."""
    m = metrics_module()
    h, w = split.masks.shape[1:]
    scores, maps = [], []
    for rgb in images:
        score, amap = runner(rgb)
        scores.append(score)
        maps.append(cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR))
    stacked = np.stack(maps)
    return {
        "image_auroc": float(m.roc_auc(split.labels, np.asarray(scores))),
        "pixel_auroc": float(m.pixel_auroc(split.masks, stacked, max_pixels=None)),
        "pro": float(m.pro_auc(split.masks, stacked)),
    }


def interleaved_latency(
    runners: dict[str, Runner], frames: list[np.ndarray], rounds: int, warmup: int
) -> dict[str, list[float]]:
    """Milliseconds per call: for each round, for each frame, every contender once (order rotated per frame).

    ``warmup`` untimed passes over the frames come first, interleaved the same way.
    """
    names = list(runners)
    times: dict[str, list[float]] = {n: [] for n in names}
    step = 0
    for r in range(warmup + rounds):
        for frame in frames:
            order = names[step % len(names) :] + names[: step % len(names)]
            step += 1
            for name in order:
                t0 = time.perf_counter()
                runners[name](frame)
                dt = (time.perf_counter() - t0) * 1000.0
                if r >= warmup:
                    times[name].append(dt)
    return times


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def _own_jiffies() -> int:
    """CPU time of this process (all threads) in jiffies."""
    t = os.times()
    return round((t.user + t.system) * os.sysconf("SC_CLK_TCK"))


def wait_for_quiet(max_share: float, timeout_s: float, window_s: float = 5.0) -> dict[str, float]:
    """Wait (up to ``timeout_s``) until other processes use at most ``max_share`` of the machine's CPU time over
    ``window_s``; the cores are shared with other work. Returns the seconds waited and the last share seen."""
    start = time.monotonic()
    while True:
        busy0, total0, own0 = *_cpu_jiffies(), _own_jiffies()
        time.sleep(window_s)
        busy1, total1, own1 = *_cpu_jiffies(), _own_jiffies()
        share = max(0, (busy1 - busy0) - (own1 - own0)) / max(1, total1 - total0)
        waited = time.monotonic() - start
        if share <= max_share or waited >= timeout_s:
            return {"waited_s": round(waited, 1), "other_processes_cpu_share_before": round(share, 3)}


def latency_phase(
    specs: list[Spec], frames: list[np.ndarray], threads: int, rounds: int, warmup: int
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Load every contender with ``threads`` threads, time them interleaved, free them.

    Returns median/p90/min ms per label, and the share of the machine's CPU time other processes took meanwhile.
    """
    import torch

    runners = {s.label: load(s, threads) for s in specs}
    torch.set_num_threads(threads)  # process-wide; after linewatch's construction limited numpy's BLAS only
    busy0, total0, own0 = *_cpu_jiffies(), _own_jiffies()
    times = interleaved_latency(runners, frames, rounds, warmup)
    busy1, total1, own1 = *_cpu_jiffies(), _own_jiffies()
    del runners
    gc.collect()
    # share of the machine's CPU time that other processes used while this phase ran (the cores are shared)
    others = max(0, (busy1 - busy0) - (own1 - own0)) / max(1, total1 - total0)
    machine = {"other_processes_cpu_share": round(others, 3), "loadavg_end": os.getloadavg()[0]}
    return {
        label: {
            "median_ms": statistics.median(t),
            "p90_ms": float(np.percentile(t, 90)),
            "min_ms": min(t),
            "calls": len(t),
        }
        for label, t in times.items()
    }, machine


def _rss_kib(field: str = "VmRSS") -> int:
    """This process's resident set (or ``VmHWM`` peak) in KiB, from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def probe(spec: Spec, frame_path: Path, threads: int, warmup: int) -> dict[str, float]:
    """In this (fresh) process: baseline RSS, start-up (construction incl. runtime import -> first result), RSS
    after load + ``warmup`` calls, and the peak."""
    rgb = read_rgb(frame_path)
    base = _rss_kib()
    t0 = time.perf_counter()
    runner = load(spec, threads)
    runner(rgb)
    startup = time.perf_counter() - t0
    for _ in range(warmup):
        runner(rgb)
    return {
        "baseline_rss_mb": base / 1024,
        "startup_s": startup,
        "rss_mb": _rss_kib() / 1024,
        "peak_rss_mb": _rss_kib("VmHWM") / 1024,
    }


def probe_subprocess(spec: Spec, frame_path: Path, threads: int, warmup: int) -> dict[str, float]:
    """Run :func:`probe` in a fresh interpreter (``python -m bench.peer.measure``) and return its figures."""
    args = [sys.executable, "-m", "bench.peer.measure", json.dumps(asdict(spec)), str(frame_path)]
    out = subprocess.run(
        [*args, str(threads), str(warmup)], cwd=REPO, capture_output=True, text=True, check=False, timeout=600
    )
    if out.returncode != 0:
        raise RuntimeError(f"probe of {spec.label} failed: {out.stderr[-2000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def interpreter_baseline() -> float:
    """RSS (MB) of a bare interpreter that imported nothing but the standard library."""
    code = "import pathlib;print([l for l in pathlib.Path('/proc/self/status').read_text().split('\\n')"
    code += " if l.startswith('VmRSS:')][0].split()[1])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip()) / 1024


def main(argv: list[str]) -> None:
    """Probe entry point: ``SPEC_JSON FRAME THREADS WARMUP``; prints one JSON line."""
    spec = Spec(**json.loads(argv[0]))
    result: dict[str, Any] = probe(spec, Path(argv[1]), int(argv[2]), int(argv[3]))
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])

"""Where a frame's time goes: the real pipeline (``CameraPipeline.process`` on real bottle images, MQTT alerts to
a real mosquitto) under cProfile, its functions grouped into stages; wall and process-CPU time per frame.

Process CPU counts every thread (the interpreter's worker thread and the delivery thread included), so the CPU
column can exceed the wall column for the multi-threaded graph invocations. Run with ``make bench-pipeline``.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench.pipeline_bench import _config
from bench.services import mosquitto
from edge_agent.agent import Agent
from edge_agent.preprocess import read_image
from edge_agent.records import Frame

#: stage -> (module file suffix, function name[, caller name]); cumulative time of that function (from that caller)
STAGES: dict[str, tuple[str, ...]] = {
    "read + decode (file -> RGB)": ("edge_agent/preprocess.py", "read_image"),
    "pre-process (resize, colour)": ("edge_agent/preprocess.py", "prepare"),
    "int8 backbone (quantise, invoke, dequantise)": ("edge_agent/runtime.py", "__call__", "score"),
    "patch embedding (pool, concat)": ("edge_agent/scoring.py", "patch_embedding"),
    "nearest-neighbour search (float32)": ("edge_agent/scoring.py", "distances"),
    "distance map (upsample, blur)": ("edge_agent/scoring.py", "distance_map"),
    "classifier (anomalous frames)": ("edge_agent/inspector.py", "classify"),
    "heatmap render": ("edge_agent/heatmap.py", "render_heatmap"),
    "heatmap write (JPEG)": ("edge_agent/pipeline.py", "_save_heatmap"),
    "original copy": ("edge_agent/pipeline.py", "_keep_original"),
    "SQLite: verdict + outbox (one transaction)": ("edge_agent/store.py", "record"),
    "SQLite: already-scored check": ("edge_agent/store.py", "has_verdict"),
}


def profile(bundle: Path, paths: list[Path], repeats: int, port: int, timer: Callable[[], float]) -> pstats.Stats:
    """Profile ``read_image`` + ``CameraPipeline.process`` for every frame; MQTT delivery runs alongside."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        agent = Agent(_config(tmp, bundle, port, None, tmp / "in"))
        pipeline = agent.cameras[0].pipeline
        agent.delivery.start()
        pipeline.process(Frame("cam1", "replay", "warm-up", datetime.now(UTC), None), read_image(paths[0]))
        profiler = cProfile.Profile(timer)
        profiler.enable()
        for r in range(repeats):
            for path in paths:
                frame = Frame("cam1", "replay", f"{r}/{path.parent.name}/{path.name}", datetime.now(UTC), str(path))
                pipeline.process(frame, read_image(path))
        profiler.disable()
        agent.stop()
    return pstats.Stats(profiler)


def per_stage(stats: pstats.Stats, frames: int) -> tuple[dict[str, float], float]:
    """Milliseconds per frame for each stage, and the total per frame (the profiled loop)."""
    table = stats.stats  # type: ignore[attr-defined]
    out: dict[str, float] = {}
    for stage, (suffix, name, *caller) in STAGES.items():
        cumulative = 0.0
        for key, (_cc, _nc, _tt, ct, callers) in table.items():
            if not (key[0].endswith(suffix) and key[2] == name):
                continue
            if caller:  # only the time spent on behalf of that caller
                cumulative += sum(c[3] for ck, c in callers.items() if ck[2] == caller[0])
            else:
                cumulative += ct
        out[stage] = cumulative * 1000 / frames
    return out, stats.total_tt * 1000 / frames  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    """Profile the pipeline twice (wall clock, process CPU) and print one table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, default=Path("bundles/demo-bottle"))
    default_images = Path(os.environ.get("LINEWATCH_DATASETS", "../shared/datasets")) / "mvtec_ad/bottle/test"
    parser.add_argument("--images", type=Path, default=default_images)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    paths = sorted(args.images.rglob("*.png"))
    frames = len(paths) * args.repeats
    with mosquitto() as port:
        wall, wall_total = per_stage(profile(args.bundle, paths, args.repeats, port, time.perf_counter), frames)
        cpu, cpu_total = per_stage(profile(args.bundle, paths, args.repeats, port, time.process_time), frames)
    lines = ["| stage | wall ms/frame | % of wall | CPU ms/frame | % of CPU |", "|---|---|---|---|---|"]
    for stage in STAGES:
        lines.append(
            f"| {stage} | {wall[stage]:.2f} | {100 * wall[stage] / wall_total:.0f} % | {cpu[stage]:.2f} | "
            f"{100 * cpu[stage] / cpu_total:.0f} % |"
        )
    lines.append(f"| **whole frame** | {wall_total:.2f} | 100 % | {cpu_total:.2f} | 100 % |")
    text = "\n".join(lines) + (
        f"\n\n{frames} frames ({len(paths)} bottle test images, 512x512 PNG, x {args.repeats}) through "
        "`CameraPipeline.process` under cProfile (its own overhead included); stages overlap where one calls "
        "another (the classifier includes its own pre-processing and graph call). Command: `make bench-pipeline`.\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pipeline_stages.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where a frame's time goes: the real pipeline (``CameraPipeline.process`` on real bottle images) with a light
timer around each stage function; wall and process-CPU milliseconds per frame, each stage's own time only.

Two phases, so that CPU time is not mixed between threads: (1) scoring and storing with delivery paused (the
outbox fills; process CPU = the camera thread plus the interpreter's worker thread), (2) the delivery worker
drains that outbox to a real mosquitto (MQTT alerts), timed as a stage of its own. Run with
``make bench-pipeline``.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.machine import describe_cpu
from bench.pipeline_bench import _config
from bench.services import mosquitto
from edge_agent import inspector as inspector_module
from edge_agent import pipeline as pipeline_module
from edge_agent.agent import Agent
from edge_agent.inspector import DefectClassifier
from edge_agent.nn_index import ClusteredIndex
from edge_agent.pipeline import CameraPipeline
from edge_agent.preprocess import read_image
from edge_agent.records import Frame
from edge_agent.runtime import TFLiteModel
from edge_agent.scoring import ThreadedSearch
from edge_agent.store import Store


class StageClock:
    """Exclusive wall and process-CPU time per stage (a nested stage's time is taken out of its parent's)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self._stack = threading.local()

    def timed(self, label: Callable[..., str] | str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` wrapped; ``label`` is a stage name or a function of the call's arguments giving one."""

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            stack = self._stack.__dict__.setdefault("frames", [])
            stack.append([0.0, 0.0])  # children's wall and CPU
            w0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                child_wall, child_cpu = stack.pop()
                name = label(*args) if callable(label) else label
                self.wall[name] += wall - child_wall
                self.cpu[name] += cpu - child_cpu
                if stack:
                    stack[-1][0] += wall
                    stack[-1][1] += cpu

        return wrapper


def _graph_label(model: TFLiteModel, *_: Any) -> str:
    """The backbone returns feature maps (4-D outputs) from an image; the type tail from a feature map; the
    classifier one probability vector."""
    if model.input.shape[-1] != 3:
        return "type tail graph (int8, frames whose type is asked for)"
    feature_maps = any(len(t.shape) == 4 for t in model.outputs)
    return "backbone graph (int8, outputs dequantised)" if feature_maps else "classifier graph (int8)"


def instrument(clock: StageClock) -> None:
    """Wrap the stage functions where the pipeline looks them up."""
    for module, name, label in [
        (inspector_module, "prepare", "resize + colour (shared pre-processing)"),
        (inspector_module, "graph_input", "graph input (normalise + quantise, one table lookup)"),
        (inspector_module, "patch_embedding", "patch embedding (pool, concat)"),
        (inspector_module, "distance_map", "distance map (upsample, blur)"),
        (pipeline_module, "calibrated_heatmap", "heatmap render (overlay formats)"),
        (pipeline_module, "encode_map", "heatmap: stored map (levels, PNG)"),
    ]:
        setattr(module, name, clock.timed(label, getattr(module, name)))
    for cls, name, label in [
        (TFLiteModel, "run", _graph_label),
        (ThreadedSearch, "distances", "nearest-neighbour search (float32; exact or clustered)"),
        (ClusteredIndex, "distances", "nearest-neighbour search (float32; exact or clustered)"),
        (DefectClassifier, "probabilities", "type features + classifier softmax"),
        (CameraPipeline, "_save_heatmap", "heatmap write (+ overlay encode)"),
        (CameraPipeline, "_keep_original", "original copy"),
        (Store, "record", "SQLite: verdict + outbox rows (one transaction)"),
        (Store, "has_verdict", "SQLite: already-scored check"),
        (CameraPipeline, "process", "rest of the pipeline (verdict, outbox rows, ...)"),
    ]:
        setattr(cls, name, clock.timed(label, getattr(cls, name)))


def run(bundle: Path, paths: list[Path], repeats: int, port: int, clock: StageClock) -> dict[str, float]:
    """Score + store every frame with delivery paused, then drain the outbox; returns the phases' totals."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        agent = Agent(_config(tmp, bundle, port, None, tmp / "in"))
        pipeline = agent.cameras[0].pipeline
        read = clock.timed("read + decode (file -> RGB)", read_image)
        for path in paths[:5]:  # warm-up, not counted
            pipeline.process(Frame("cam1", "replay", f"warm/{path.name}", datetime.now(UTC), str(path)), read(path))
        clock.wall.clear()
        clock.cpu.clear()
        w0, c0 = time.perf_counter(), time.process_time()
        for r in range(repeats):
            for path in paths:
                frame = Frame("cam1", "replay", f"{r}/{path.parent.name}/{path.name}", datetime.now(UTC), str(path))
                pipeline.process(frame, read(path))
        scored = {"wall": time.perf_counter() - w0, "cpu": time.process_time() - c0}
        pending = agent.store.queue_depths()["mqtt"]
        w0, c0 = time.perf_counter(), time.process_time()
        agent.delivery.start()
        while agent.store.queue_depths()["mqtt"] and time.perf_counter() - w0 < 300:
            time.sleep(0.01)
        drained = {"wall": time.perf_counter() - w0, "cpu": time.process_time() - c0, "alerts": pending}
        agent.stop()
    return {**{f"scored_{k}": v for k, v in scored.items()}, **{f"drain_{k}": v for k, v in drained.items()}}


def main(argv: list[str] | None = None) -> int:
    """Profile the pipeline and print one table (ms per frame)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, default=Path("bundles/demo-bottle"))
    default_images = Path(os.environ.get("LINEWATCH_DATASETS", "../shared/datasets")) / "mvtec_ad/bottle/test"
    parser.add_argument("--images", type=Path, default=default_images)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    paths = sorted(args.images.rglob("*.png"))
    frames = len(paths) * args.repeats
    clock = StageClock()
    instrument(clock)
    with mosquitto() as port:
        totals = run(args.bundle, paths, args.repeats, port, clock)
    wall_total, cpu_total = totals["scored_wall"] * 1000 / frames, totals["scored_cpu"] * 1000 / frames
    lines = ["| stage | wall ms/frame | % of wall | CPU ms/frame | % of CPU |", "|---|---|---|---|---|"]
    for stage in sorted(clock.wall, key=clock.wall.get, reverse=True):  # type: ignore[arg-type]
        wall, cpu = clock.wall[stage] * 1000 / frames, clock.cpu[stage] * 1000 / frames
        lines.append(
            f"| {stage} | {wall:.2f} | {100 * wall / wall_total:.0f} % | {cpu:.2f} | {100 * cpu / cpu_total:.0f} % |"
        )
    lines.append(f"| **score + store, whole frame** | {wall_total:.2f} | 100 % | {cpu_total:.2f} | 100 % |")
    drain_wall, drain_cpu = totals["drain_wall"] * 1000 / frames, totals["drain_cpu"] * 1000 / frames
    lines.append(
        f"| MQTT delivery of the outbox ({totals['drain_alerts']:.0f} alerts, separate phase) | {drain_wall:.2f} | - | "
        f"{drain_cpu:.2f} | - |"
    )
    text = "\n".join(lines) + (
        f"\n\n{frames} frames ({len(paths)} bottle test images, 512x512 PNG, x {args.repeats}); each stage's own "
        "time (nested stages taken out); CPU is process CPU, so graph calls count both interpreter threads. "
        f"{describe_cpu()}. Command: `make bench-pipeline`.\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pipeline_stages.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

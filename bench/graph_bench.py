"""What a frame pays for in the int8 graph: the shipped scorer graph against a bare EfficientNet-Lite graph of the
same depth, and the type tail that runs only for anomalous frames.

In one run, interleaved image by image, at 1 and 2 interpreter threads (median ms per call):

- **bare**: the backbone to the scorer's deepest patch tap with ImageNet weights and one output, converted to int8
  here with the same calibration images (the reference the scorer graph is held to: within 1.2x);
- **scorer**: the bundle's ``scorer.tflite`` (every frame);
- **tail**: the bundle's ``type_tail.tflite`` (only frames whose type is asked for);
- **inspect, normal frame** / **inspect, type asked**: ``Inspector.inspect`` from a decoded frame to the verdict
  fields, without and with the tail (``classify_all``).

Written to ``bench/results/graph.md``. Run with ``make bench-graph`` (the demo bundle by default).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.machine import describe_cpu
from edge_agent.bundle import load_bundle
from edge_agent.inspector import Inspector
from edge_agent.manifest import PatchCoreParams
from edge_agent.preprocess import normalise, prepare, read_image
from edge_agent.runtime import TFLiteModel
from model_export.convert import convert
from training.backbones.efficientnet_lite import feature_extractor
from training.config import load_train_config
from training.data import load_dataset

CALIBRATION_IMAGES = 100


def bare_graph(variant: str, size: int, deepest_stride: int, calibration: np.ndarray) -> bytes:
    """Int8 EfficientNet-Lite with ImageNet weights to ``stride<deepest_stride>``, one output."""
    model = feature_extractor(variant, size, "imagenet", taps=(f"stride{deepest_stride}",))
    return convert(model, "int8", calibration)


def median_ms(samples: list[float]) -> float:
    """Median of seconds, in ms."""
    return statistics.median(samples) * 1e3


def measure(calls: dict[str, Callable[[int], object]], frames: int, rounds: int) -> dict[str, float]:
    """Median ms of each call, interleaved frame by frame (``call(i)`` works on frame ``i``), after a warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(rounds + 1):
        for i in range(frames):
            for name, call in calls.items():
                started = time.perf_counter()
                call(i)
                if r:
                    times[name].append(time.perf_counter() - started)
    return {name: median_ms(v) for name, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    """Build the bare graph, time everything, write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("bundles/demo-bottle"))
    parser.add_argument("--config", type=Path, default=Path("configs/datasets/bottle.yaml"))
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/graph.md"))
    args = parser.parse_args(argv)
    bundle = load_bundle(args.bundle)
    entry = bundle.models["scorer"]
    params = entry.params
    if not isinstance(params, PatchCoreParams) or params.type_tail is None:
        parser.error(f"{args.bundle}: needs a PatchCore bundle with a type tail (params.type_tail)")
    spec = entry.preprocess
    settings = entry.settings or {}
    variant = str(settings.get("backbone", "efficientnet_lite0")).removeprefix("efficientnet_")
    splits = load_dataset(load_train_config(args.config).dataset)
    calibration = np.stack([prepare(read_image(s.path), spec) for s in splits.train[:CALIBRATION_IMAGES]])
    coarsest = min(o.shape[1] for o in entry.outputs if len(o.shape) == 4)
    deepest = spec.size // coarsest  # feature_extractor refuses a stride no stage ends at
    bare = bare_graph(variant, spec.size, deepest, normalise(calibration, spec))
    test = splits.test[:: max(1, len(splits.test) // args.frames)][: args.frames]
    decoded = [read_image(s.path) for s in test]
    inputs = [normalise(prepare(image, spec)[None], spec) for image in decoded]
    rows: dict[int, dict[str, float]] = {}
    for threads in (1, 2):
        models = {
            "bare": TFLiteModel(bare, threads),
            "scorer": TFLiteModel(bundle.path / entry.file, threads),
            "tail": TFLiteModel(bundle.path / params.type_tail, threads),
        }
        last_taps = [models["scorer"](x)[params.patch_taps - 1] for x in inputs]
        inspector = Inspector(bundle, threads=threads)
        calls: dict[str, Callable[[int], object]] = {
            "bare": lambda i, m=models["bare"]: m(inputs[i]),
            "scorer": lambda i, m=models["scorer"]: m(inputs[i]),
            "tail": lambda i, m=models["tail"], taps=last_taps: m(taps[i]),
            "inspect, normal frame": lambda i, ins=inspector: ins.inspect(decoded[i], threshold=float("inf")),
            "inspect, type asked": lambda i, ins=inspector: ins.inspect(decoded[i], classify_all=True),
        }
        rows[threads] = measure(calls, len(inputs), args.rounds)
    lines = [
        "| call | 1 thread ms | 2 threads ms | ratio to bare (1 / 2 threads) |",
        "|---|---|---|---|",
    ]
    for name in rows[1]:
        ratio = " / ".join(f"{rows[t][name] / rows[t]['bare']:.2f}" for t in (1, 2))
        lines.append(f"| {name} | {rows[1][name]:.2f} | {rows[2][name]:.2f} | {ratio} |")
    lines += [
        "",
        f"Bundle {bundle.name} {bundle.version} ({spec.size} px, {variant}, patch taps to stride {deepest}); bare: "
        f"{variant} with ImageNet weights to stride {deepest}, one output, int8 from {len(calibration)} training "
        f"images; {len(inputs)} {splits.name} test frames x {args.rounds} rounds, "
        f"interleaved; medians. Machine: {describe_cpu()}. Command: `make bench-graph`.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""linewatch vs anomalib on MVTec AD bottle, side by side: quality, interleaved latency, RSS, start-up.

Runs inside ``.venv-peer`` (``make bench-peer``): anomalib 2.7.0 PatchCore and PaDiM trained with its Engine
on the same EfficientNet-Lite0 ImageNet checkpoint and the same stride-8/16 taps as linewatch's bundle, exported
to torch, ONNX and OpenVINO; linewatch's int8 bundle through ``Inspector.inspect``. Writes
``bench/results/peer.md`` and ``peer.json`` (``--quick``: a small smoke run written under ``runs/peer-quick``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.machine import describe_cpu
from bench.peer import contenders, measure, peer_models, report, weights
from bench.peer.data import load_test_split, read_rgb, timing_frames, train_count

REPO = Path(__file__).resolve().parents[2]
QUICK_TRAIN = 24


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    datasets = Path(os.environ.get("LINEWATCH_DATASETS", REPO.parent / "shared" / "datasets"))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=REPO / "bundles" / "demo-bottle")
    p.add_argument("--data", type=Path, default=datasets / "mvtec_ad" / "bottle")
    p.add_argument("--work", type=Path, default=None, help="trained peers and exports (default runs/peer)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--models", nargs="+", default=list(peer_models.KINDS), choices=peer_models.KINDS)
    p.add_argument("--quiet-share", type=float, default=0.15, help="wait until others use at most this CPU share")
    p.add_argument("--quiet-timeout", type=float, default=900.0, help="longest wait (s) before each latency phase")
    p.add_argument("--retrain", action="store_true", help="train and export again even if runs/peer matches")
    p.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_TRAIN} train images, 12 test images")
    args = p.parse_args(argv)
    if args.quick:
        args.frames, args.rounds, args.warmup, args.quiet_timeout = min(args.frames, 4), 1, 1, 0.0
    args.work = args.work or REPO / "runs" / ("peer-quick" if args.quick else "peer")
    args.out = args.out or (REPO / "runs" / "peer-quick" / "results" if args.quick else REPO / "bench" / "results")
    return args


def environment() -> dict[str, Any]:
    """CPU, cores and library versions."""
    import anomalib
    import nncf
    import onnxruntime
    import openvino
    import timm
    import torch

    return {
        "cpu": describe_cpu(),
        "cores": os.cpu_count(),
        "python": f"Python {platform.python_version()}",
        "anomalib": anomalib.__version__,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "openvino": openvino.__version__.split("-")[0],
        "timm": timm.__version__,
        "nncf": nncf.__version__,
    }


def bundle_settings(bundle: Path) -> tuple[int, int]:
    """(input size, memory-bank rows) of the bundle's scorer, read from its manifest."""
    scorer = json.loads((bundle / "manifest.json").read_text())["models"]["scorer"]
    return int(scorer["preprocess"]["size"]), int(scorer["params"]["bank_size"])


def bundle_facts(bundle: Path) -> dict[str, Any]:
    """Name, version and training images of the linewatch bundle (from its manifest)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    data = manifest.get("data", {})
    return {
        "name": manifest.get("name"),
        "version": manifest.get("version"),
        "train_images": data.get("train_images"),
        "validation_images": data.get("validation_images"),
    }


def train_peers(args: argparse.Namespace, size: int, bank: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train/export (or reuse) every peer; returns (peer logs, settings that describe them)."""
    full = train_count(args.data)
    n_train = min(QUICK_TRAIN, full) if args.quick else full
    bank_rows = round(bank * n_train / full) if args.quick else bank
    category = peer_models.train_subset(args.data, args.work / "data", n_train) if args.quick else args.data
    from anomalib import __version__ as anomalib_version
    from torch import __version__ as torch_version

    peers: dict[str, Any] = {}
    for kind in args.models:
        cfg = peer_models.PeerConfig(
            kind, size, bank_rows, n_train, str(args.data.resolve()), anomalib_version, torch_version
        )
        print(f"[peer] {kind}: train + export (or reuse {args.work / kind})", flush=True)
        peers[kind] = peer_models.train_and_export(cfg, args.work, category, retrain=args.retrain)
    settings = {"train_images": n_train, "bank_size": bank_rows, "padim_features": 152}
    return peers, settings


def check_weights(size: int) -> dict[str, float]:
    """Mapping checks: timm vs reference, and the anomalib extractor used for training at ``size``."""
    check = weights.verify_against_reference()
    cfg = peer_models.PeerConfig("patchcore", size, 1, 1, "", "", "")
    model = peer_models.build_model(cfg)
    check["extractor_taps_max_abs_diff"] = weights.verify_extractor(model.model.feature_extractor, size)
    return check


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; returns the result dict written to ``peer.json``."""
    t_start = time.perf_counter()
    size, bank = bundle_settings(args.bundle)
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    check = check_weights(size)
    print(f"[peer] weights check: {check}", flush=True)
    peers, peer_settings = train_peers(args, size, bank)
    stages["train_export_s"] = time.perf_counter() - t0
    exports = {k: v["exports"] for k, v in peers.items()}
    specs = contenders.specs(args.bundle, exports)
    extra = contenders.quality_only(exports)

    t0 = time.perf_counter()
    split = load_test_split(args.data, limit=12 if args.quick else None)
    images = [read_rgb(p) for p in split.paths]
    quality: dict[str, dict[str, float]] = {}
    for spec in specs + extra:
        quality[spec.label] = measure.quality(contenders.load(spec, 2), split, images)
        gc.collect()
        print(f"[peer] quality {spec.label}: {quality[spec.label]}", flush=True)
    del images
    stages["quality_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    frame_paths, frames = timing_frames(args.data, args.frames)
    latency, machine_load = {}, {}
    for n in args.threads:
        quiet = measure.wait_for_quiet(args.quiet_share, args.quiet_timeout)
        print(f"[peer] before the {n}-thread phase: {quiet}", flush=True)
        latency[str(n)], machine_load[str(n)] = measure.latency_phase(specs, frames, n, args.rounds, args.warmup)
        machine_load[str(n)] |= quiet
        print(
            f"[peer] latency {n} thread(s): "
            + ", ".join(f"{k} {v['median_ms']:.1f}" for k, v in latency[str(n)].items())
        )
    stages["latency_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    probe_threads, probe_warmup = max(args.threads), 3
    rss = {s.label: measure.probe_subprocess(s, frame_paths[0], probe_threads, probe_warmup) for s in specs}
    stages["rss_s"] = time.perf_counter() - t0
    ov_fp32 = next((s.path for s in specs if s.kind == "openvino" and "int8" not in s.path), None)
    stages["total_s"] = time.perf_counter() - t_start

    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {
            "command": "make bench-peer" if not args.quick else "make bench-peer PEER_ARGS=--quick",
            "argv": sys.argv[1:],
            "quick": args.quick,
            "bundle": str(args.bundle),
            "size": size,
            "frames": len(frames),
            "frame_files": [p.name for p in frame_paths],
            "rounds": args.rounds,
            "warmup": args.warmup,
            "threads": args.threads,
            "probe_threads": probe_threads,
            "probe_warmup": probe_warmup,
            "quiet_share": args.quiet_share,
            "quiet_timeout": args.quiet_timeout,
            "quality_images": len(split.paths),
            "defective_images": int(split.labels.sum()),
            "timm_model": weights.TIMM_NAME,
            "layers": list(weights.LAYERS),
            **peer_settings,
        },
        "environment": environment(),
        "weights_check": check,
        "peers": peers,
        "contenders": [
            {"label": s.label, "kind": s.kind, "model": s.model, "precision": s.precision} for s in specs + extra
        ],
        "quality": quality,
        "latency": latency,
        "machine_load": machine_load,
        "rss": rss,
        "interpreter_baseline_rss_mb": measure.interpreter_baseline(),
        "probe_baseline_rss_mb": min(r["baseline_rss_mb"] for r in rss.values()),
        "openvino_properties": {str(n): contenders.openvino_properties(ov_fp32, n) for n in args.threads}
        if ov_fp32
        else {},
        "linewatch_bundle": bundle_facts(args.bundle),
        "metrics_pulled_tensorflow": "tensorflow" in sys.modules,
        "stages": {k: round(v, 1) for k, v in stages.items()},
    }


def main(argv: list[str] | None = None) -> None:
    """Run, write ``peer.json`` and ``peer.md``, print the table."""
    args = parse_args(argv)
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peer.json").write_text(json.dumps(result, indent=2) + "\n")
    md = report.markdown(result)
    (args.out / "peer.md").write_text(md)
    print(md)
    print(f"written: {args.out / 'peer.md'}, {args.out / 'peer.json'} ({result['stages']['total_s']:.0f} s)")


if __name__ == "__main__":
    main()

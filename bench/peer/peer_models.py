"""anomalib PatchCore and PaDiM on the same Lite0 weights and taps as linewatch: training and export.

Everything goes through anomalib's own API: ``Engine.fit`` on its ``MVTecAD`` datamodule, then ``Engine.export``
to torch (pickled module), ONNX and OpenVINO IR (default precision, and INT8_PTQ through NNCF). The exported
graphs take a float32 (1, 3, 512, 512) image in 0..1 and contain anomalib's pre-processor (resize to the
benchmark size, normalisation), the model, and a post-processor with normalisation and thresholding off, so
``anomaly_map`` and ``pred_score`` are the raw distances (no clamping to 0..1, which would tie pixels).

Results are kept in ``work/<kind>/`` with a ``config.json`` stamp; a later run with the same settings reuses
them (anomalib's k-center-greedy coreset takes many minutes on 2 cores).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.peer import weights
from bench.peer.data import image_files

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub access is ever attempted; this makes a slip fail fast

KINDS = ("patchcore", "padim")
EXPORTS = ("torch", "onnx", "openvino", "openvino_int8")
INPUT_SIZE = (512, 512)  # the stored bottle frames; the graphs resize inside, as an anomalib deployment does


@dataclass(frozen=True)
class PeerConfig:
    """What a trained peer depends on; a change retrains."""

    kind: str
    size: int
    bank_size: int
    train_images: int
    data_root: str
    anomalib: str
    torch: str
    padim_features: int = 152
    export: str = "batch1-opset18"

    def stamp(self) -> dict[str, Any]:
        """Plain dict for ``config.json``."""
        return asdict(self)


def train_subset(root: Path, dest: Path, train_limit: int) -> Path:
    """A copy of ``root`` (an MVTec category folder) under ``dest`` with only the first ``train_limit`` train images.

    anomalib's datamodule reads a category folder and skips symlinks that leave it, so ``--quick`` copies.
    """
    category = dest / root.name
    keep = set(image_files(root / "train" / "good")[:train_limit])
    for src in sorted(root.rglob("*")):
        rel = src.relative_to(root)
        if not src.is_file() or (rel.parts[0] == "train" and src not in keep):
            continue
        (category / rel).parent.mkdir(parents=True, exist_ok=True)
        if not (category / rel).exists():
            shutil.copyfile(src, category / rel)
    return category


def _pre_processor(size: int) -> Any:
    """anomalib's pre-processor: resize to ``size`` (stretch), the checkpoint's own normalisation."""
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    return PreProcessor(transform=Compose([Resize((size, size), antialias=True), Normalize(weights.MEAN, weights.STD)]))


def build_model(cfg: PeerConfig) -> Any:
    """An untrained anomalib model on ``tf_efficientnet_lite0`` (no download) with the Lite0 checkpoint loaded."""
    from anomalib.models import Padim, Patchcore
    from anomalib.post_processing import PostProcessor

    common: dict[str, Any] = {
        "backbone": weights.TIMM_NAME,
        "layers": list(weights.LAYERS),
        "pre_trained": False,
        "pre_processor": _pre_processor(cfg.size),
        "post_processor": PostProcessor(enable_normalization=False, enable_thresholding=False),
        "evaluator": False,
        "visualizer": False,
    }
    if cfg.kind == "patchcore":
        patches = cfg.train_images * (cfg.size // 8) ** 2
        # KCenterGreedy keeps int(patches * ratio) rows; the half row makes that exactly bank_size
        model = Patchcore(coreset_sampling_ratio=(cfg.bank_size + 0.5) / patches, **common)
    elif cfg.kind == "padim":
        model = Padim(n_features=cfg.padim_features, **common)
    else:
        raise ValueError(f"unknown peer kind {cfg.kind!r}")
    weights.load_into(model.model.feature_extractor.feature_extractor)
    return model


def _datamodule(category: Path, val_from_train: bool = False) -> Any:
    """anomalib's MVTecAD datamodule on ``category``; with ``val_from_train`` half the normal train images form val."""
    from anomalib.data import MVTecAD

    extra: dict[str, Any] = {"val_split_mode": "from_train", "val_split_ratio": 0.5} if val_from_train else {}
    return MVTecAD(
        root=category.parent,
        category=category.name,
        train_batch_size=16,
        eval_batch_size=1,
        num_workers=0,
        seed=0,
        **extra,
    )


def _export_all(engine: Any, model: Any, out: Path, category: Path, log: dict[str, Any]) -> dict[str, str]:
    """Every export path anomalib offers for CPU; a failing one is recorded in ``log`` and skipped."""
    from anomalib.deploy import CompressionType

    # anomalib's default marks the batch dynamic with an example batch of 2; with torch 2.14's dynamo exporter
    # PatchCore's graph came out fixed at batch 2. One frame per call: a static batch-1 graph. Opset 18: the
    # exporter's lowest; asking anomalib's default 14 only adds a failing down-conversion (kept at 18 anyway).
    onnx_kwargs = {"dynamic_axes": {}, "opset_version": 18}
    jobs: dict[str, dict[str, Any]] = {
        "torch": {"export_type": "torch"},
        "onnx": {"export_type": "onnx", "input_size": INPUT_SIZE, "onnx_kwargs": onnx_kwargs},
        "openvino": {"export_type": "openvino", "input_size": INPUT_SIZE, "onnx_kwargs": onnx_kwargs},
        "openvino_int8": {
            "export_type": "openvino",
            "input_size": INPUT_SIZE,
            "onnx_kwargs": onnx_kwargs,
            "model_file_name": "model_int8",
            "compression_type": CompressionType.INT8_PTQ,
            "datamodule": _datamodule(category, val_from_train=True),
        },
    }
    paths: dict[str, str] = {}
    for name, kwargs in jobs.items():
        t0 = time.perf_counter()
        try:
            path = engine.export(model=model, export_root=out, **kwargs)
        except Exception as exc:
            log[f"export_{name}_error"] = f"{type(exc).__name__}: {exc}"[:500]
            logging.getLogger(__name__).warning("anomalib export %s failed: %s", name, exc)
            continue
        log[f"export_{name}_s"] = round(time.perf_counter() - t0, 1)
        paths[name] = str(path)
    return paths


def train_and_export(cfg: PeerConfig, work: Path, category: Path, retrain: bool = False) -> dict[str, Any]:
    """Train ``cfg.kind`` with ``Engine.fit`` and export it, or reuse ``work/<kind>`` when its stamp matches.

    Returns the stamp: config, fit seconds, memory-bank rows, export paths and any export errors.
    """
    out = work / cfg.kind
    stamp_file = out / "config.json"
    if not retrain and stamp_file.exists():
        stamp: dict[str, Any] = json.loads(stamp_file.read_text())
        if stamp.get("config") == cfg.stamp() and all(Path(p).exists() for p in stamp["exports"].values()):
            stamp["reused"] = True
            return stamp
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    seed_everything(0, verbose=False)
    model = build_model(cfg)
    engine = Engine(
        default_root_dir=out / "engine",
        logger=False,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        limit_val_batches=0,  # no validation: the post-processor neither normalises nor thresholds
    )
    t0 = time.perf_counter()
    engine.fit(model=model, datamodule=_datamodule(category))
    log: dict[str, Any] = {"config": cfg.stamp(), "fit_s": round(time.perf_counter() - t0, 1), "reused": False}
    if cfg.kind == "patchcore":
        log["bank_rows"] = int(model.model.memory_bank.shape[0])
        if log["bank_rows"] != cfg.bank_size:
            raise RuntimeError(f"PatchCore memory bank has {log['bank_rows']} rows, wanted {cfg.bank_size}")
    log["exports"] = _export_all(engine, model, out, category, log)
    stamp_file.write_text(json.dumps(log, indent=2))
    return log

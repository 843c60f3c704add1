"""Turn trained model folders into a verified edge bundle, gated on float-vs-int8 parity.

The scorer (PatchCore backbone or autoencoder) and, when present, the defect-type classifier are
converted to TFLite; thresholds are re-fitted on the exported model's own validation scores; the
bundle is written only when the parity gate passes.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from edge_agent.bundle import FORMAT_VERSION, MANIFEST, load_bundle, parse_entry, sha256_file
from edge_agent.inspector import AutoencoderTFLite, DefectClassifier, PatchCoreTFLite
from edge_agent.preprocess import PreprocessSpec, normalise
from edge_agent.runtime import TFLiteModel
from edge_agent.scoring import fit_calibration
from model_export.convert import Precision, convert
from training import metrics
from training.artifacts import code_version, read_json
from training.config import TrainConfig
from training.data import DatasetSplits, load_dataset, load_images, load_masks

log = logging.getLogger(__name__)

MAX_CALIBRATION_IMAGES = 300


class ParityError(RuntimeError):
    """The exported model departs from the float model by more than the gate allows."""


@dataclass
class ExportReport:
    """What an export measured: float vs exported figures per model."""

    bundle: Path | None
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)


def _scorer_kind(folder: Path) -> str:
    return str(read_json(folder / "meta.json")["kind"])


def _float_scores(folder: Path, kind: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores and maps of the float Keras model (the reference of the parity check)."""
    from training.models.patchcore import PatchCoreScorer
    from training.train_anomaly import AutoencoderScorer, keras_forward

    spec = PreprocessSpec.from_dict(read_json(folder / "preprocess.json"))
    params = read_json(folder / "calibration.json")
    if kind == "patchcore":
        forward = keras_forward(keras.models.load_model(folder / "backbone.keras", compile=False))
        scorer = PatchCoreScorer(forward, spec, params["blur_sigma"], params["pool"])
        scorer.set_bank(np.load(folder / "memory_bank.npy"))
        return scorer.score(images)
    model = keras.models.load_model(folder / "model.keras", compile=False)
    forward = keras_forward(model)
    return AutoencoderScorer(lambda x: forward(x)[0], spec, params["ssim_weight"], params["blur_sigma"]).score(images)


def _edge_scores(scorer: PatchCoreTFLite | AutoencoderTFLite, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    results = [scorer.score(image) for image in images]
    return np.array([r[0] for r in results], np.float32), np.stack([r[1] for r in results])


def _io_entry(tflite_bytes: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    model = TFLiteModel(tflite_bytes, 1)
    return model.input.to_dict(), [o.to_dict() for o in model.outputs]


def export_scorer(
    folder: Path, splits: DatasetSplits, cfg: TrainConfig, precision: Precision, staging: Path, max_drop: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Convert the scorer, re-fit its calibration on exported scores, check parity; returns (entry, figures)."""
    kind = _scorer_kind(folder)
    spec = PreprocessSpec.from_dict(read_json(folder / "preprocess.json"))
    params = read_json(folder / "calibration.json")
    model_file = folder / ("backbone.keras" if kind == "patchcore" else "model.keras")
    model = keras.models.load_model(model_file, compile=False)
    train_images, _ = load_images(splits.train[:MAX_CALIBRATION_IMAGES], spec)
    tflite = convert(model, precision, normalise(train_images, spec))
    (staging / "scorer.tflite").write_bytes(tflite)
    input_info, outputs = _io_entry(tflite)
    entry: dict[str, Any] = {
        "kind": kind,
        "file": "scorer.tflite",
        "precision": precision,
        "preprocess": spec.to_dict(),
        "input": input_info,
        "outputs": outputs,
        "calibration": None,
        "params": {k: params[k] for k in ("blur_sigma", "pool", "ssim_weight") if k in params},
        "source_model": read_json(folder / "meta.json")["name"],
    }
    if kind == "patchcore":
        shutil.copy(folder / "memory_bank.npy", staging / "memory_bank.npy")
        entry["params"]["memory_bank"] = "memory_bank.npy"
    edge_cls = PatchCoreTFLite if kind == "patchcore" else AutoencoderTFLite
    edge = edge_cls(parse_entry("scorer", entry), staging, threads=2)
    val_images, _ = load_images(splits.validation, spec)
    val_scores, val_maps = _edge_scores(edge, val_images)
    t = cfg.threshold
    calibration = fit_calibration(val_scores, val_maps, t.method, t.k, t.quantile, t.pixel_quantile)
    entry["calibration"] = calibration.to_dict()
    test_images, test_samples = load_images(splits.test, spec)
    labels = np.array([s.label for s in test_samples])
    float_scores, float_maps = _float_scores(folder, kind, test_images)
    edge_scores, edge_maps = _edge_scores(edge, test_images)
    figures = {
        "model": kind,
        "precision": precision,
        "auroc_float": metrics.roc_auc(labels, float_scores),
        "auroc_export": metrics.roc_auc(labels, edge_scores),
        "map_correlation": float(np.corrcoef(float_maps.ravel(), edge_maps.ravel())[0, 1]),
        "score_correlation": float(np.corrcoef(float_scores, edge_scores)[0, 1]),
        "f1_export": metrics.binary_report(labels, (edge_scores >= calibration.threshold).astype(int))["f1"],
        "size_float_bytes": model_file.stat().st_size,
        "size_export_bytes": len(tflite),
    }
    if splits.has_masks:
        masks = load_masks(test_samples, spec)
        figures["pixel_auroc_float"] = metrics.pixel_auroc(masks, float_maps)
        figures["pixel_auroc_export"] = metrics.pixel_auroc(masks, edge_maps)
        figures["pro_float"] = metrics.pro_auc(masks, float_maps)
        figures["pro_export"] = metrics.pro_auc(masks, edge_maps)
    drop = figures["auroc_float"] - figures["auroc_export"]
    figures["auroc_drop"] = drop
    if drop > max_drop:
        msg = f"{kind} {precision}: image AUROC {figures['auroc_export']:.4f} vs float {figures['auroc_float']:.4f}"
        raise ParityError(f"{msg}: drop {drop:.4f} exceeds the gate of {max_drop}")
    return entry, figures


def export_classifier(
    folder: Path, splits: DatasetSplits, precision: Precision, staging: Path, min_agreement: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Convert the defect-type classifier; gate on top-1 agreement with the float model."""
    spec = PreprocessSpec.from_dict(read_json(folder / "preprocess.json"))
    class_names = read_json(folder / "calibration.json")["class_names"]
    model = keras.models.load_model(folder / "model.keras", compile=False)
    calib_images, _ = load_images(splits.train[:MAX_CALIBRATION_IMAGES], spec)
    test_images, test_samples = load_images(splits.test, spec)
    representative = normalise(np.concatenate([calib_images, test_images]), spec)
    tflite = convert(model, precision, representative)
    (staging / "classifier.tflite").write_bytes(tflite)
    input_info, outputs = _io_entry(tflite)
    entry: dict[str, Any] = {
        "kind": "classifier",
        "file": "classifier.tflite",
        "precision": precision,
        "preprocess": spec.to_dict(),
        "input": input_info,
        "outputs": outputs,
        "class_names": class_names,
        "params": {},
        "source_model": read_json(folder / "meta.json")["name"],
    }
    edge = DefectClassifier(parse_entry("classifier", entry), staging, threads=2)
    float_pred = np.asarray(model.predict(normalise(test_images, spec), verbose=0)).argmax(axis=1)
    edge_pred = np.array([edge.probabilities(image).argmax() for image in test_images])
    labels = np.array([class_names.index(s.defect_type) for s in test_samples])
    agreement = float((float_pred == edge_pred).mean())
    figures = {
        "model": "classifier",
        "precision": precision,
        "top1_agreement": agreement,
        "accuracy_float": float((float_pred == labels).mean()),
        "accuracy_export": float((edge_pred == labels).mean()),
        "size_float_bytes": (folder / "model.keras").stat().st_size,
        "size_export_bytes": len(tflite),
        "note": "accuracy on images the shipped classifier was trained on: a parity check, not an evaluation",
    }
    if agreement < min_agreement:
        msg = f"classifier {precision}: top-1 agreement with float {agreement:.3f} is below the gate {min_agreement}"
        raise ParityError(msg)
    return entry, figures


def export_bundle(
    run_dir: Path,
    cfg: TrainConfig,
    out: Path,
    precision: Precision = "int8",
    scorer: str = "patchcore",
    classifier: str | None = "classifier-transfer",
    max_auroc_drop: float = 0.01,
    min_agreement: float = 0.9,
) -> ExportReport:
    """Export ``run_dir/<scorer>`` (and the classifier) into the bundle folder ``out``; atomic on success."""
    splits = load_dataset(cfg.dataset)
    report = ExportReport(bundle=None)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        staging = Path(tmp)
        models: dict[str, Any] = {}
        models["scorer"], report.figures["scorer"] = export_scorer(
            run_dir / scorer, splits, cfg, precision, staging, max_auroc_drop
        )
        if classifier and (run_dir / classifier / "model.keras").is_file():
            models["classifier"], report.figures["classifier"] = export_classifier(
                run_dir / classifier, splits, precision, staging, min_agreement
            )
        _write_manifest(staging, models, splits, cfg, precision, report.figures)
        load_bundle(staging)  # the agent's own check, before the bundle becomes visible
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
        staging.mkdir()  # TemporaryDirectory cleans up the now-empty name
    report.bundle = out
    return report


def _write_manifest(
    staging: Path,
    models: dict[str, Any],
    splits: DatasetSplits,
    cfg: TrainConfig,
    precision: str,
    figures: dict[str, Any],
) -> None:
    files = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": f"{cfg.dataset.name}-{models['scorer']['kind']}-{precision}",
        "version": time.strftime("%Y%m%d-%H%M%S", time.gmtime()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code_version": code_version(),
        "precision": precision,
        "data": {
            "name": splits.name,
            "train_images": len(splits.train),
            "validation_images": len(splits.validation),
            "test_images": len(splits.test),
            "defect_types": splits.defect_types,
        },
        "models": models,
        "metrics": figures,
        "files": files,
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")

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
from edge_agent.inspector import AutoencoderTFLite, DefectClassifier, PatchCoreTFLite, backbone_patches
from edge_agent.manifest import manifest_json, parse_manifest
from edge_agent.nn_index import DEFAULT_PROBE
from edge_agent.preprocess import PreprocessSpec, normalise
from edge_agent.runtime import TFLiteModel
from edge_agent.scoring import fit_calibration
from model_export.convert import Precision, convert
from training import metrics
from training.artifacts import code_version, data_description, read_calibration, read_json
from training.config import TrainConfig
from training.data import DatasetSplits, Sample, load_dataset, load_images, load_masks
from training.models.patchcore import MEMORY_BANK_FILE, WHITENING_FILE, MemoryBank
from training.synthetic import synthetic_recall

log = logging.getLogger(__name__)

MAX_CALIBRATION_IMAGES = 300
#: Defect-type model folders ``classifier="auto"`` takes, first found first.
DEFECT_TYPE_MODELS = ("type-head", "classifier-transfer")


class ParityError(RuntimeError):
    """The exported model departs from the float model by more than the gate allows; ``model`` names it."""

    def __init__(self, message: str, model: str) -> None:
        super().__init__(message)
        self.model = model


@dataclass
class ExportReport:
    """What an export measured: float vs exported figures per model."""

    bundle: Path | None
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)


def _scorer_kind(folder: Path) -> str:
    return str(read_json(folder / "meta.json")["kind"])


def _float_scores(folder: Path, kind: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores and maps of the float Keras model (the reference of the parity check)."""
    from training.models.patchcore import PatchCoreScorer, load_bank
    from training.train_anomaly import AutoencoderScorer, keras_forward

    spec = PreprocessSpec.from_dict(read_json(folder / "preprocess.json"))
    params = read_calibration(folder)
    if kind == "patchcore":
        forward = keras_forward(keras.models.load_model(folder / "backbone.keras", compile=False))
        scorer = PatchCoreScorer(forward, spec, params["blur_sigma"], params["pool"], params["score_top_fraction"])
        scorer.set_bank(*load_bank(folder))
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
    folder: Path,
    splits: DatasetSplits,
    cfg: TrainConfig,
    precision: Precision,
    staging: Path,
    max_drop: float,
    graph: keras.Model | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Convert the scorer, re-fit its calibration on exported scores, check parity; returns (entry, figures).

    ``graph`` replaces the scorer's own Keras model by one that also carries the classifier head
    (:func:`model_export.fuse.shared_backbone_model`); its int8 ranges are then calibrated on the normal training
    images plus the defective images the classifier was trained on, so that the head's ranges cover defects.
    """
    kind = _scorer_kind(folder)
    spec = PreprocessSpec.from_dict(read_json(folder / "preprocess.json"))
    params = read_calibration(folder)
    model_file = folder / ("backbone.keras" if kind == "patchcore" else "model.keras")
    model = graph or keras.models.load_model(model_file, compile=False)
    train_images, _ = load_images(splits.train, spec)
    calibration_images = train_images[:MAX_CALIBRATION_IMAGES]
    if graph is not None:
        defects, _ = load_images([s for s in splits.test if s.label == 1][:MAX_CALIBRATION_IMAGES], spec)
        calibration_images = np.concatenate([calibration_images, defects])
    tflite = convert(model, precision, normalise(calibration_images, spec))
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
        "params": {k: params[k] for k in ("blur_sigma", "pool", "ssim_weight", "score_top_fraction") if k in params},
        "source_model": read_json(folder / "meta.json")["name"],
        "settings": params.get("settings"),  # PatchCore runs only
        "search": params.get("search"),
    }
    loo_scores = None
    if kind == "patchcore":
        bank, loo_scores = refit_memory_bank(TFLiteModel(tflite, 2), train_images, spec, params, cfg)
        np.save(staging / MEMORY_BANK_FILE, bank.rows)
        entry["params"]["memory_bank"] = MEMORY_BANK_FILE
        entry["params"]["bank_size"] = len(bank.rows)
        if bank.whitening is not None:
            np.save(staging / WHITENING_FILE, bank.whitening)
            entry["params"]["whitening"] = WHITENING_FILE
        entry["params"]["patch_taps"] = len(params["taps"])
        entry["params"]["search_probe"] = DEFAULT_PROBE  # the calibration below scores with it
    edge_cls = PatchCoreTFLite if kind == "patchcore" else AutoencoderTFLite
    edge = edge_cls(parse_entry("scorer", entry), staging, threads=2)
    val_images, _ = load_images(splits.validation, spec)
    val_scores, val_maps = _edge_scores(edge, val_images)
    t = cfg.threshold
    calibration = fit_calibration(
        val_scores, val_maps, t.method, t.k, t.quantile, t.pixel_quantile, t.false_alarm_rate, loo_scores
    )
    entry["calibration"] = calibration.to_dict()
    recall = synthetic_recall(lambda x: _edge_scores(edge, x)[0], val_images, calibration.threshold, cfg.dataset.seed)
    test_images, test_samples = load_images(splits.test, spec)
    labels = np.array([s.label for s in test_samples])
    float_scores, float_maps = _float_scores(folder, kind, test_images)
    edge_scores, edge_maps = _edge_scores(edge, test_images)
    figures: dict[str, Any] = {
        "model": kind,
        "precision": precision,
        "auroc_float": metrics.roc_auc(labels, float_scores),
        "auroc_export": metrics.roc_auc(labels, edge_scores),
        "map_correlation": float(np.corrcoef(float_maps.ravel(), edge_maps.ravel())[0, 1]),
        "score_correlation": float(np.corrcoef(float_scores, edge_scores)[0, 1]),
        "f1_export": metrics.binary_report(labels, (edge_scores >= calibration.threshold).astype(int))["f1"],
        "size_float_bytes": model.count_params() * 4,  # float32 weights of the graph converted (fused heads too)
        "size_export_bytes": len(tflite),
        "graph": "shared with the classifier" if graph is not None else "own",
        "expected_false_alarm_rate": calibration.false_alarm_bound,
        "test_false_alarm_rate": float((edge_scores[labels == 0] >= calibration.threshold).mean()),
        "test_recall": float((edge_scores[labels == 1] >= calibration.threshold).mean()),
        "synthetic_recall": recall,
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
        raise ParityError(f"{msg}: drop {drop:.4f} exceeds the gate of {max_drop}", kind)
    return entry, figures


def refit_memory_bank(
    model: TFLiteModel, train_images: np.ndarray, spec: PreprocessSpec, params: dict[str, Any], cfg: TrainConfig
) -> tuple[MemoryBank, np.ndarray]:
    """PatchCore memory bank rebuilt from the exported graph's own features, and the leave-one-out scores.

    Same coreset procedure as training (``params["bank"]``, written by training), whitening included: it is
    fitted again on the exported graph's patches. Comparing int8 features with an int8-built bank cancels the
    graph's systematic quantisation error: on tire it took the int8 image AUROC from 0.569 (float bank) to 0.794,
    float 0.750. The second array holds each training image's score against the bank without its own rows (for
    the threshold, as in training).
    """
    from training.models.patchcore import build_memory_bank, leave_one_out_scores

    bank_kwargs = params["bank"]
    pool = int(params["pool"])
    grid: list[tuple[int, int]] = []

    def embed(images: np.ndarray) -> np.ndarray:
        out = []
        for image in images:
            patches, image_grid, _, _ = backbone_patches(model, image, spec, pool, len(params["taps"]))
            grid[:] = [image_grid]
            out.append(patches)
        return np.stack(out)

    bank = build_memory_bank(embed, train_images, **bank_kwargs)
    loo = leave_one_out_scores(
        embed(train_images), bank, grid[0], spec.size, params["blur_sigma"], params["score_top_fraction"]
    )
    return bank, loo


def export_classifier(
    folder: Path, splits: DatasetSplits, precision: Precision, staging: Path, min_agreement: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Convert the defect-type classifier into its own graph; gate on top-1 agreement with the float model."""
    spec = PreprocessSpec.from_dict(read_json(folder / "preprocess.json"))
    model = keras.models.load_model(folder / "model.keras", compile=False)
    calib_images, _ = load_images(splits.train[:MAX_CALIBRATION_IMAGES], spec)
    test_images, test_samples = load_images(splits.test, spec)
    representative = normalise(np.concatenate([calib_images, test_images]), spec)
    tflite = convert(model, precision, representative)
    (staging / "classifier.tflite").write_bytes(tflite)
    input_info, outputs = _io_entry(tflite)
    entry = _classifier_entry(folder, "classifier.tflite", precision, input_info, outputs)
    edge = DefectClassifier(parse_entry("classifier", entry), staging, threads=2)
    edge_probs = [edge.probabilities(image) for image in test_images]
    figures = _classifier_parity(folder, model, test_images, test_samples, edge_probs)
    figures.update(precision=precision, size_export_bytes=len(tflite))
    _gate_classifier(figures, precision, min_agreement)
    return entry, figures


def shared_classifier_entry(
    folder: Path, splits: DatasetSplits, scorer_entry: dict[str, Any], staging: Path, min_agreement: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Entry of a classifier whose softmax is the scorer graph's head output; same parity gate as its own graph."""
    head = next(o for o in scorer_entry["outputs"] if len(o["shape"]) == 2)
    entry = _classifier_entry(folder, scorer_entry["file"], scorer_entry["precision"], scorer_entry["input"], [head])
    entry["shares_graph_of"] = "scorer"
    graph = TFLiteModel(staging / scorer_entry["file"], 2)  # the head alone: no bank, no distance search
    classifier = DefectClassifier(parse_entry("classifier", entry), staging, threads=2)
    spec = PreprocessSpec.from_dict(read_json(folder / "preprocess.json"))
    test_images, test_samples = load_images(splits.test, spec)
    heads = [next(o[0] for o in graph(normalise(image[None], spec)) if o.ndim == 2) for image in test_images]
    probs = [classifier.probabilities(image, head=head) for image, head in zip(test_images, heads, strict=True)]
    model = keras.models.load_model(folder / "model.keras", compile=False)
    figures = _classifier_parity(folder, model, test_images, test_samples, probs)
    figures.update(precision=scorer_entry["precision"], graph="shared with the scorer")
    _gate_classifier(figures, scorer_entry["precision"], min_agreement)
    return entry, figures


def _classifier_entry(
    folder: Path, file: str, precision: str, input_info: dict[str, Any], outputs: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "kind": "classifier",
        "file": file,
        "precision": precision,
        "preprocess": read_json(folder / "preprocess.json"),
        "input": input_info,
        "outputs": outputs,
        "class_names": read_calibration(folder)["class_names"],
        "params": {},
        "source_model": read_json(folder / "meta.json")["name"],
    }


def _classifier_parity(
    folder: Path, model: keras.Model, test_images: np.ndarray, test_samples: list[Sample], edge_probs: list[np.ndarray]
) -> dict[str, Any]:
    """Top-1 agreement of the exported classifier with the float model on the test split's prepared images."""
    spec = PreprocessSpec.from_dict(read_json(folder / "preprocess.json"))
    class_names = read_calibration(folder)["class_names"]
    float_pred = np.asarray(model.predict(normalise(test_images, spec), verbose=0)).argmax(axis=1)
    edge_pred = np.array([p.argmax() for p in edge_probs])
    labels = np.array([class_names.index(s.defect_type) for s in test_samples])
    return {
        "model": "classifier",
        "top1_agreement": float((float_pred == edge_pred).mean()),
        "accuracy_float": float((float_pred == labels).mean()),
        "accuracy_export": float((edge_pred == labels).mean()),
        "size_float_bytes": (folder / "model.keras").stat().st_size,
        "note": "accuracy on images the shipped classifier was trained on: a parity check, not an evaluation",
    }


def _gate_classifier(figures: dict[str, Any], precision: str, min_agreement: float) -> None:
    if figures["top1_agreement"] < min_agreement:
        agreement = figures["top1_agreement"]
        msg = f"classifier {precision}: top-1 agreement with float {agreement:.3f} is below the gate {min_agreement}"
        raise ParityError(msg, "classifier")


def export_bundle(
    run_dir: Path,
    cfg: TrainConfig,
    out: Path,
    precision: Precision = "int8",
    scorer: str = "patchcore",
    classifier: str | None = "auto",
    max_auroc_drop: float = 0.01,
    min_agreement: float = 0.9,
    share_backbone: bool = True,
) -> ExportReport:
    """Export ``run_dir/<scorer>`` (and the classifier) into the bundle folder ``out``; atomic on success.

    ``classifier="auto"`` takes the first of :data:`DEFECT_TYPE_MODELS` the run has. With ``share_backbone`` the
    classifier becomes a head of the scorer's graph when the two can share it (:mod:`model_export.fuse`);
    otherwise, or when they cannot, it gets its own graph. A type head reads the scorer graph's last patch tap,
    itself or through the type tail graph to its deeper tap.
    """
    from model_export.fuse import shared_backbone_model, type_tail_model
    from model_export.type_head_export import export_type_tail, is_type_head, type_head_entry
    from training.type_head import LAST_PATCH_TAP

    splits = load_dataset(cfg.dataset)
    report = ExportReport(bundle=None)
    out.parent.mkdir(parents=True, exist_ok=True)
    if classifier == "auto":
        classifier = next((c for c in DEFECT_TYPE_MODELS if (run_dir / c / "model.keras").is_file()), None)
    classifier_dir = run_dir / classifier if classifier else None
    if classifier_dir is not None and not (classifier_dir / "model.keras").is_file():
        classifier_dir = None
    graph, tail, reads_last_tap = None, None, False
    if classifier_dir is not None and share_backbone and is_type_head(classifier_dir):
        tail = type_tail_model(run_dir / scorer, classifier_dir)
        reads_last_tap = read_calibration(classifier_dir)["deep_tap"] == LAST_PATCH_TAP
    elif classifier_dir is not None and share_backbone:
        graph = shared_backbone_model(run_dir / scorer, classifier_dir)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        staging = Path(tmp)
        models: dict[str, Any] = {}
        models["scorer"], report.figures["scorer"] = export_scorer(
            run_dir / scorer, splits, cfg, precision, staging, max_auroc_drop, graph
        )
        if classifier_dir is not None and (tail is not None or reads_last_tap):
            if reads_last_tap:
                models["scorer"]["params"]["type_reads_last_tap"] = True
            tail_figures = export_type_tail(tail, models["scorer"], splits, staging, precision) if tail else {}
            models["classifier"], report.figures["classifier"] = type_head_entry(
                classifier_dir, splits, models["scorer"], staging, min_agreement
            )
            report.figures["classifier"].update(tail_figures)
        elif classifier_dir is not None and graph is not None:
            models["classifier"], report.figures["classifier"] = shared_classifier_entry(
                classifier_dir, splits, models["scorer"], staging, min_agreement
            )
        elif classifier_dir is not None:
            models["classifier"], report.figures["classifier"] = export_classifier(
                classifier_dir, splits, precision, staging, min_agreement
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
        "data": data_description(splits),
        "models": models,
        "metrics": figures,
        "files": files,
    }
    typed = parse_manifest(manifest, f"bundle {staging} (being written)")  # the agent's own contract, on write
    text = json.dumps(manifest_json(typed), indent=2, sort_keys=True)
    (staging / MANIFEST).write_text(text + "\n", encoding="utf-8")

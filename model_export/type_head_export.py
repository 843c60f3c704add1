"""Bundle entry of a type head (``training.type_head``): it reads the scorer graph's deeper tap.

As the memory bank is rebuilt from the exported graph's features, the head's regression is re-fitted on the
exported graph's features of the same labelled images (int8 taps, distances to the int8-built bank): on tire the
float head read int8 features with a top-1 agreement of 0.74. The gate is the drop of the cross-validated macro
F1 of the types from the float run to the exported features; the top-1 agreement of the shipped head with the
float one is reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np

from edge_agent.bundle import parse_entry
from edge_agent.inspector import PatchCoreTFLite, backbone_maps, resolve_head
from edge_agent.preprocess import PreprocessSpec
from edge_agent.runtime import TFLiteModel
from edge_agent.type_head import TypeHead
from model_export.convert import Precision, convert
from training.artifacts import read_calibration, read_json
from training.data import DatasetSplits, load_images
from training.type_head import cross_validate, fit_logistic, float_evidence

#: Largest drop of the types' cross-validated macro F1 from float to exported features the gate lets through.
MAX_F1_DROP = 0.05
#: File of the type tail graph (``params.type_tail`` of the scorer).
TAIL_FILE = "type_tail.tflite"


def export_type_tail(
    tail: keras.Model, scorer_entry: dict[str, Any], splits: DatasetSplits, staging: Path, precision: Precision
) -> dict[str, Any]:
    """Convert the type tail (:func:`model_export.fuse.type_tail_model`) and name it in the scorer's entry.

    Its int8 ranges are calibrated on what it will read: the exported scorer graph's own last patch tap, of the
    training images and of the labelled defects the head is fitted on. Returns its figures.
    """
    from model_export.export import MAX_CALIBRATION_IMAGES

    spec = PreprocessSpec.from_dict(scorer_entry["preprocess"])
    scorer = TFLiteModel(staging / scorer_entry["file"], 2)
    last = scorer_entry["params"]["patch_taps"] - 1
    defects = [s for s in splits.test if s.label == 1]
    images, _ = load_images(splits.train[:MAX_CALIBRATION_IMAGES] + defects[:MAX_CALIBRATION_IMAGES], spec)
    taps = np.stack([backbone_maps(scorer, image, spec)[0][last] for image in images])
    tflite = convert(tail, precision, taps)
    (staging / TAIL_FILE).write_bytes(tflite)
    scorer_entry["params"]["type_tail"] = TAIL_FILE
    return {"type_tail_size_export_bytes": len(tflite), "type_tail_calibrated_on": len(images)}


def is_type_head(folder: Path) -> bool:
    """True when ``folder`` holds a type head (not a classifier)."""
    return bool(read_json(folder / "meta.json")["kind"] == "type_head")


def type_head_entry(
    folder: Path, splits: DatasetSplits, scorer_entry: dict[str, Any], staging: Path, min_agreement: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Entry of the type head sharing the scorer's graph, and its figures; raises ParityError on a failed gate.

    ``min_agreement`` is not a gate here (the head is re-fitted, see the module docstring); it is reported.
    """
    from model_export.export import ParityError

    head_file = read_calibration(folder)["head"]
    float_head = TypeHead.load(folder / head_file)
    run = read_json(folder / "metrics.json")
    spec = PreprocessSpec.from_dict(read_json(folder / "preprocess.json"))
    images, kept = load_images(splits.test, spec, splits.skipped)
    types = np.array([float_head.class_names.index(s.defect_type) if s.label == 1 else -1 for s in kept])
    edge = PatchCoreTFLite(parse_entry("scorer", scorer_entry), staging, threads=2)
    features, scores = [], []
    for image in images:
        score, _, deferred = edge.score_and_head(image)
        evidence = resolve_head(deferred)
        assert evidence is not None  # the graph has the deeper tap or a tail: PatchCoreTFLite pooled it
        features.append(evidence)
        scores.append(score)
    x = np.stack(features)
    anomalous = np.array(scores) >= scorer_entry["calibration"]["threshold"]
    exported = cross_validate(x, types, len(float_head.class_names), anomalous, run["folds"])
    fitted = fit_logistic(x[types >= 0], types[types >= 0], len(float_head.class_names))
    head = TypeHead(float_head.class_names, fitted.mean, fitted.std, fitted.weights, fitted.bias)
    head.save(staging / head_file)
    defects = types >= 0
    float_types = _float_types(folder, float_head, images[defects], spec)
    agreement = float(np.mean(head.probabilities(x[defects]).argmax(axis=1) == float_types))
    drop = run["types_macro_f1"] - exported["types_macro_f1"]
    figures = {
        "model": "type-head",
        "precision": scorer_entry["precision"],
        "graph": "shared with the scorer",
        "types_macro_f1_float": run["types_macro_f1"],
        "types_macro_f1_export": exported["types_macro_f1"],
        "macro_f1_float": run["macro_f1"],
        "macro_f1_export": exported["macro_f1"],
        "types_macro_f1_drop": drop,
        "top1_agreement": agreement,
        "min_agreement_asked": min_agreement,
        "compared_on": (
            f"{int(defects.sum())} defective test images "
            f"({run['folds']}-fold CV x {run.get('repeats', 1)} repeats for the F1 figures)"
        ),
        "size_export_bytes": (staging / head_file).stat().st_size,
    }
    if drop > MAX_F1_DROP:
        msg = f"type head: macro F1 of the types {exported['types_macro_f1']:.3f} on exported features vs float "
        raise ParityError(
            f"{msg}{run['types_macro_f1']:.3f}: drop {drop:.3f} exceeds the gate of {MAX_F1_DROP}", "classifier"
        )
    tail_file = scorer_entry["params"].get("type_tail")
    if tail_file is not None:
        outputs = [o.to_dict() for o in TFLiteModel(staging / tail_file, 1).outputs]
        figures["graph"] = "the scorer's graph to its patch taps; the type tail graph for anomalous frames"
    elif scorer_entry["params"].get("type_reads_last_tap"):
        maps = [o for o in scorer_entry["outputs"] if len(o["shape"]) == 4]
        outputs = maps[scorer_entry["params"]["patch_taps"] - 1 :]
        figures["graph"] = "the scorer's graph: the head pools its last patch tap (no tail)"
    else:
        outputs = [o for o in scorer_entry["outputs"] if len(o["shape"]) == 4][scorer_entry["params"]["patch_taps"] :]
    entry = {
        "kind": "type_head",
        "file": scorer_entry["file"],
        "shares_graph_of": "scorer",
        "precision": scorer_entry["precision"],
        "preprocess": scorer_entry["preprocess"],
        "input": scorer_entry["input"],
        "outputs": outputs,
        "class_names": head.class_names,
        "params": {"head": head_file},
        "source_model": read_json(folder / "meta.json")["name"],
    }
    return entry, figures


def _float_types(folder: Path, head: TypeHead, images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The float head's types on the float model's features (float backbone, the training run's float bank)."""
    model = keras.models.load_model(folder / "model.keras", compile=False)
    calibration = read_calibration(folder)
    features = float_evidence(model, images, spec, folder.parent / calibration["scorer"])[0][calibration["deep_tap"]]
    return np.asarray(head.probabilities(features).argmax(axis=1))

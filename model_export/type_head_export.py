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
from edge_agent.inspector import PatchCoreTFLite
from edge_agent.preprocess import PreprocessSpec
from edge_agent.type_head import TypeHead
from training.artifacts import read_calibration, read_json
from training.data import DatasetSplits, load_images
from training.type_head import cross_validate, fit_logistic, float_evidence

#: Largest drop of the types' cross-validated macro F1 from float to exported features the gate lets through.
MAX_F1_DROP = 0.05


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
        score, _, evidence = edge.score_and_head(image)
        assert evidence is not None  # the graph has the deeper tap: PatchCoreTFLite pooled it
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
        "compared_on": f"{int(defects.sum())} defective test images ({run['folds']}-fold CV for the F1 figures)",
        "size_export_bytes": (staging / head_file).stat().st_size,
    }
    if drop > MAX_F1_DROP:
        msg = f"type head: macro F1 of the types {exported['types_macro_f1']:.3f} on exported features vs float "
        raise ParityError(
            f"{msg}{run['types_macro_f1']:.3f}: drop {drop:.3f} exceeds the gate of {MAX_F1_DROP}", "classifier"
        )
    entry = {
        "kind": "type_head",
        "file": scorer_entry["file"],
        "shares_graph_of": "scorer",
        "precision": scorer_entry["precision"],
        "preprocess": scorer_entry["preprocess"],
        "input": scorer_entry["input"],
        "outputs": [o for o in scorer_entry["outputs"] if len(o["shape"]) == 4][scorer_entry["params"]["patch_taps"] :],
        "class_names": head.class_names,
        "params": {"head": head_file},
        "source_model": read_json(folder / "meta.json")["name"],
    }
    return entry, figures


def _float_types(folder: Path, head: TypeHead, images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The float head's types on the float model's features (float backbone, the training run's float bank)."""
    model = keras.models.load_model(folder / "model.keras", compile=False)
    features = float_evidence(model, images, spec, folder.parent / read_calibration(folder)["scorer"])[0]
    return np.asarray(head.probabilities(features).argmax(axis=1))

"""Bundle entry of a type head (``training.type_head``): it reads the scorer graph's deeper tap.

The head's regression was fitted on float features; the gate compares its types on the exported graph's features
(int8 taps, int8-built bank) with those on the float model's, over the test split's defective images.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import keras
import numpy as np

from edge_agent.bundle import parse_entry
from edge_agent.inspector import PatchCoreTFLite
from edge_agent.preprocess import PreprocessSpec, normalise
from edge_agent.scoring import NearestNeighbourIndex
from edge_agent.type_head import TypeHead
from training.artifacts import read_json
from training.data import DatasetSplits, load_images
from training.type_head import image_evidence


def is_type_head(folder: Path) -> bool:
    """True when ``folder`` holds a type head (not a classifier)."""
    return bool(read_json(folder / "meta.json")["kind"] == "type_head")


def type_head_entry(
    folder: Path, splits: DatasetSplits, scorer_entry: dict[str, Any], staging: Path, min_agreement: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Entry of the type head sharing the scorer's graph, and its parity figures; raises on a failed gate."""
    from model_export.export import ParityError

    head_file = read_json(folder / "calibration.json")["head"]
    shutil.copyfile(folder / head_file, staging / head_file)
    head = TypeHead.load(staging / head_file)
    deep = [o for o in scorer_entry["outputs"] if len(o["shape"]) == 4][scorer_entry["params"]["patch_taps"] :]
    entry = {
        "kind": "type_head",
        "file": scorer_entry["file"],
        "shares_graph_of": "scorer",
        "precision": scorer_entry["precision"],
        "preprocess": scorer_entry["preprocess"],
        "input": scorer_entry["input"],
        "outputs": deep,
        "class_names": head.class_names,
        "params": {"head": head_file},
        "source_model": read_json(folder / "meta.json")["name"],
    }
    spec = PreprocessSpec.from_dict(read_json(folder / "preprocess.json"))
    images, _ = load_images([s for s in splits.test if s.label == 1], spec)
    edge = PatchCoreTFLite(parse_entry("scorer", scorer_entry), staging, threads=2)
    edge_types = []
    for image in images:
        features = edge.score_and_head(image)[2]
        assert features is not None  # the graph has the deeper tap: PatchCoreTFLite pooled it
        edge_types.append(head.probabilities(features).argmax())
    float_types = _float_types(folder, head, images, spec)
    agreement = float(np.mean(np.array(edge_types) == float_types))
    figures = {
        "model": "type-head",
        "precision": scorer_entry["precision"],
        "graph": "shared with the scorer",
        "top1_agreement": agreement,
        "compared_on": f"{len(images)} defective test images",
        "size_export_bytes": (staging / head_file).stat().st_size,
    }
    if agreement < min_agreement:
        msg = f"type head: top-1 agreement with float {agreement:.3f} is below the gate {min_agreement}"
        raise ParityError(msg, "classifier")
    return entry, figures


def _float_types(folder: Path, head: TypeHead, images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The head's types on the float model's features (float backbone, the training run's float bank)."""
    scorer_dir = folder.parent / read_json(folder / "calibration.json")["scorer"]
    params = read_json(scorer_dir / "calibration.json")
    index = NearestNeighbourIndex(np.load(scorer_dir / "memory_bank.npy"), threads=2)
    model = keras.models.load_model(folder / "model.keras", compile=False)
    out = []
    for image in images:
        outputs = [np.asarray(o)[0] for o in model(normalise(image[None], spec), training=False)]
        out.append(head.probabilities(image_evidence(outputs, index, params, spec.size)[0]).argmax())
    return np.array(out)

"""Model folders: what one training run leaves behind for evaluation and export.

A folder holds the model files, ``preprocess.json`` (the shared pre-processing parameters),
``calibration.json`` (threshold and score normalisation fitted on normal validation images),
``metrics.json`` and ``meta.json`` (kind, name, version, creation time, code version, data description,
SHA-256 of every file).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from edge_agent.bundle import sha256_file
from edge_agent.manifest import run_calibration
from edge_agent.preprocess import PreprocessSpec
from training.data import DatasetSplits

REPO_ROOT = Path(__file__).resolve().parents[1]


def code_version() -> str:
    """``git describe`` of the working tree, or 'unknown' outside a checkout."""
    try:
        cmd = ["git", "describe", "--always", "--dirty"]
        out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def data_description(splits: DatasetSplits) -> dict[str, Any]:
    """Counts of the splits a model was trained, calibrated and tested on."""
    return {
        "name": splits.name,
        "layout": splits.layout,
        "train_images": len(splits.train),
        "validation_images": len(splits.validation),
        "test_images": len(splits.test),
        "defect_types": splits.defect_types,
        "skipped_files": len(splits.skipped),
    }


def write_json(path: Path, data: Any) -> None:
    """Write indented, key-sorted JSON."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def read_json(path: Path) -> Any:
    """Read a JSON file."""
    return json.loads(path.read_text(encoding="utf-8"))


def read_calibration(folder: Path) -> dict[str, Any]:
    """A run folder's ``calibration.json``, validated for the kind its ``meta.json`` names (ValueError if not)."""
    kind = read_json(folder / "meta.json")["kind"]
    return run_calibration(kind, read_json(folder / "calibration.json"), f"{folder}/calibration.json")


def finalise_model_folder(
    folder: Path,
    *,
    kind: str,
    name: str,
    preprocess: PreprocessSpec,
    calibration: dict[str, Any],
    metrics: dict[str, Any],
    splits: DatasetSplits,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the JSON side files and ``meta.json`` (with hashes of every other file) into ``folder``."""
    write_json(folder / "preprocess.json", preprocess.to_dict())
    write_json(folder / "calibration.json", run_calibration(kind, calibration, f"{folder}/calibration.json"))
    write_json(folder / "metrics.json", metrics)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != "meta.json")
    meta = {
        "kind": kind,
        "name": name,
        "version": time.strftime("%Y%m%d-%H%M%S", time.gmtime()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code_version": code_version(),
        "data": data_description(splits),
        "files": {p.name: sha256_file(p) for p in files},
        **(extra or {}),
    }
    write_json(folder / "meta.json", meta)
    return meta

"""Model bundles under the bundles folder: manifest, float-vs-exported figures, training-run metrics.

A bundle's manifest carries the export figures (``metrics.scorer``: image AUROC float vs exported, pixel AUROC,
PRO, F1 at the fitted threshold, sizes; ``metrics.classifier``: top-1 agreement, accuracy). The training-run
metrics (image F1, IoU, Dice, confusion matrices, per-class F1) live in ``runs/<data set>/<model>/metrics.json``;
a run is matched to a bundle by the SHA-256 of the PatchCore memory bank, else by the model name and the newest
run created before the bundle.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from edge_agent.bundle import MANIFEST, load_bundle
from edge_agent.errors import BundleError

log = logging.getLogger(__name__)

#: (label, float key, exported key) of the scorer figures export.py writes
SCORER_PAIRS = [
    ("image AUROC", "auroc_float", "auroc_export"),
    ("pixel AUROC", "pixel_auroc_float", "pixel_auroc_export"),
    ("PRO (FPR <= 0.3)", "pro_float", "pro_export"),
    ("size (MB)", "size_float_bytes", "size_export_bytes"),
]
CLASSIFIER_PAIRS = [
    ("accuracy", "accuracy_float", "accuracy_export"),
    ("size (MB)", "size_float_bytes", "size_export_bytes"),
]
RUN_KEYS = ["image_auroc", "image_f1", "pixel_auroc", "pro", "iou", "dice", "accuracy", "macro_f1"]


@dataclass
class BundleInfo:
    """One bundle folder: its manifest (even when it does not verify) and the verification outcome."""

    path: Path
    manifest: dict[str, Any]
    verified: bool
    problem: str | None = None
    runs: dict[str, Path] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Folder name with the manifest's name and version."""
        return f"{self.path.name}: {self.manifest.get('name', '?')} {self.manifest.get('version', '?')}"


def find_bundles(bundles_dir: Path, runs_dir: Path | None = None) -> list[BundleInfo]:
    """Every folder directly under ``bundles_dir`` with a manifest.json, verified with the agent's own check."""
    if not bundles_dir.is_dir():
        return []
    out = []
    for folder in sorted(p for p in bundles_dir.iterdir() if (p / MANIFEST).is_file()):
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            log.warning("bundle %s: unreadable manifest (%s)", folder, err)
            continue
        info = BundleInfo(folder, manifest, verified=True)
        try:
            load_bundle(folder)
        except BundleError as err:
            info.verified, info.problem = False, str(err)
        if runs_dir is not None:
            info.runs = match_runs(manifest, runs_dir)
        out.append(info)
    return out


def _meta(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def match_runs(manifest: dict[str, Any], runs_dir: Path) -> dict[str, Path]:
    """Training-run folders of the bundle's models by role (see the module docstring for the rule)."""
    if not runs_dir.is_dir():
        return {}
    metas = [(p.parent, m) for p in sorted(runs_dir.glob("*/*/meta.json")) if (m := _meta(p.parent)) is not None]
    created = str(manifest.get("created", "9999"))
    bank_hash = manifest.get("files", {}).get("memory_bank.npy")
    found: dict[str, Path] = {}
    for role, entry in manifest.get("models", {}).items():
        source = entry.get("source_model")
        if role == "scorer" and bank_hash:
            exact = [f for f, m in metas if m.get("files", {}).get("memory_bank.npy") == bank_hash]
            if exact:
                found[role] = exact[0]
                continue
        named = [(str(m.get("created", "")), f) for f, m in metas if m.get("name") == source]
        earlier = sorted(c for c in named if c[0] <= created)
        if earlier:
            found[role] = earlier[-1][1]
    return found


def run_metrics(folder: Path) -> dict[str, Any]:
    """A run's metrics.json (empty when missing)."""
    try:
        return json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def float_vs_export(figures: dict[str, Any], pairs: list[tuple[str, str, str]]) -> pd.DataFrame:
    """Long table (metric, model, value) of the float and exported figures present in ``figures``."""
    precision = str(figures.get("precision", "exported"))
    rows = []
    for label, fkey, ekey in pairs:
        if fkey not in figures or ekey not in figures:
            continue
        scale = 1e-6 if "size" in label else 1.0
        rows.append({"metric": label, "model": "float32", "value": float(figures[fkey]) * scale})
        rows.append({"metric": label, "model": precision, "value": float(figures[ekey]) * scale})
    return pd.DataFrame(rows, columns=["metric", "model", "value"])


def confusion_frame(matrix: list[list[int]], names: list[str]) -> pd.DataFrame:
    """Long table (truth, predicted, n) of a confusion matrix whose rows are the truth."""
    cells = [(names[i], names[j], int(v)) for i, row in enumerate(matrix) for j, v in enumerate(row)]
    return pd.DataFrame(cells, columns=["truth", "predicted", "n"])


def feedback_confusion(df: pd.DataFrame, model_hash: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """From reviews of this model's anomalous verdicts: (agent verdict vs reviewer, predicted vs confirmed type)."""
    mine = df[(df["model_hash"] == model_hash) & df["anomalous"] & df["label"].isin(["defect", "false_alarm"])]
    verdicts = mine.assign(truth=mine["label"].map({"defect": "defect", "false_alarm": "normal"}), predicted="defect")
    binary = verdicts.groupby(["truth", "predicted"], as_index=False).size().rename(columns={"size": "n"})
    typed = mine[mine["label"] == "defect"].assign(
        truth=lambda d: d["confirmed_type"].fillna("(untyped)"), predicted=lambda d: d["defect_type"].fillna("(none)")
    )
    types = typed.groupby(["truth", "predicted"], as_index=False).size().rename(columns={"size": "n"})
    return binary, types

"""Markdown tables of model metrics, read back from model folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COLUMNS = [
    ("image_auroc", "image AUROC", "{:.3f}"),
    ("image_f1", "F1@thr", "{:.3f}"),
    ("precision", "precision", "{:.3f}"),
    ("recall", "recall", "{:.3f}"),
    ("pixel_auroc", "pixel AUROC", "{:.3f}"),
    ("pro", "PRO@0.3", "{:.3f}"),
    ("iou", "IoU", "{:.3f}"),
    ("dice", "Dice", "{:.3f}"),
    ("confusion_matrix", "confusion [[TN,FP],[FN,TP]]", "{}"),
    ("macro_f1", "macro F1 (CV)", "{:.3f}"),
    ("expected_false_alarm_rate", "expected FA rate", "{:.3f}"),
    ("synthetic_recall", "synthetic recall", "{:.3f}"),
    ("settings", "settings", "{}"),
    ("resolution", "px", "{}"),
    ("train_seconds", "train s", "{:.0f}"),
    ("search_seconds", "search s", "{:.0f}"),
    ("peak_rss_mb", "peak MiB", "{:.0f}"),
]


def read_run(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Metrics of every model folder in ``run_dir`` (folder name -> metrics.json)."""
    out = {}
    for metrics_file in sorted(run_dir.glob("*/metrics.json")):
        out[metrics_file.parent.name] = json.loads(metrics_file.read_text(encoding="utf-8"))
    if not out:
        msg = f"no model folders with metrics.json under {run_dir}"
        raise FileNotFoundError(msg)
    return out


def markdown_table(dataset: str, results: dict[str, dict[str, Any]]) -> str:
    """One Markdown table: a row per model, a column per metric ('-' where it does not apply)."""
    header = "| model | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    lines = [f"### {dataset}", "", header, "|" + "---|" * (len(COLUMNS) + 1)]
    for model, metrics in results.items():
        cells = []
        for key, _, fmt in COLUMNS:
            value = metrics.get(key)
            if key == "settings" and isinstance(value, dict):
                value = settings_text(value)
            cells.append("-" if value is None else fmt.format(value))
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def settings_text(settings: dict[str, Any]) -> str:
    """PatchCore's settings in a few words, e.g. ``lite0 320 px, rot 90/180/270, 2% bank, sigma 2, max (search)``."""
    turns = "/".join(str(t) for t in settings.get("bank_rotations") or []) or "none"
    top = settings.get("score_top_fraction")
    score = "max" if not top else f"top {top:.0%}"
    backbone = str(settings.get("backbone", "efficientnet_lite0")).removeprefix("efficientnet_")
    features = ", whitened" if settings.get("whiten") else ""
    pool = settings.get("pool", 3)
    features += "" if pool == 3 else f", pool {pool}"
    return (
        f"{backbone} {settings.get('size')} px, rot {turns}, {settings.get('coreset_ratio', 0):.0%} bank{features}, "
        f"sigma {settings.get('blur_sigma'):g}, {score} ({settings.get('chosen_by')})"
    )

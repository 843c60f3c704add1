"""Self-configuration on every data set: train PatchCore from a dataset-only config, export int8, one table.

For each data set a child process runs ``training.cli train`` on ``configs/datasets/<name>.yaml`` (the search
chooses the settings from normal images), the type head is fitted on the run (data sets with two or more defect
types), and the run is exported to an int8 bundle (scorer and type head in one graph). The first table gives the
settings chosen, the search's share of the training time, float and int8 figures on the test split (which the
search never read), and the false-alarm rate and recall at the shipped (int8) threshold; the second the type
head's 5-fold macro F1 (mean of 5 repeated splits) and its int8 agreement.
Run with ``make bench-auto``; writes ``bench/results/autoconfig.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.train_bench import environment
from training.report import settings_text

DATASETS = ("bottle", "tire", "casting")


def train_and_export(name: str, runs: Path, bundles: Path) -> dict[str, Any]:
    """Train (with the search) and export one data set; returns the figures of both."""
    config = f"configs/datasets/{name}.yaml"
    cmd = [sys.executable, "-m", "training.cli", "train", "--config", config, "--out", str(runs / name)]
    t0 = time.perf_counter()
    env = {**os.environ, "LINEWATCH_LOG": "WARNING"}
    subprocess.run([*cmd, "--models", "patchcore"], check=True, env=env, stdout=subprocess.DEVNULL)
    return export_row(name, runs / name, bundles, time.perf_counter() - t0)


def export_row(name: str, run_dir: Path, bundles: Path, wall: float | None) -> dict[str, Any]:
    """Fit the type head on a trained run when it has none, export it int8; the row of both tables."""
    from model_export.export import ParityError, export_bundle
    from training.config import load_train_config
    from training.data import load_dataset
    from training.type_head import train_type_head

    cfg = load_train_config(f"configs/datasets/{name}.yaml")
    head_dir = run_dir / "type-head"
    if not (head_dir / "meta.json").is_file():
        train_type_head(load_dataset(cfg.dataset), run_dir / "patchcore", head_dir, cfg.classifier.folds)
    types = json.loads((head_dir / "metrics.json").read_text(encoding="utf-8")) if head_dir.is_dir() else None
    classifier, refused = ("type-head" if types else None), None
    try:
        report = export_bundle(run_dir, cfg, bundles / name, "int8", "patchcore", classifier)
    except ParityError as err:
        if err.model != "classifier":
            raise
        refused = str(err)  # the scorer alone, as the line would get it
        report = export_bundle(run_dir, cfg, bundles / name, "int8", "patchcore", None)
    metrics = json.loads((run_dir / "patchcore" / "metrics.json").read_text(encoding="utf-8"))
    return {
        "name": name,
        "wall_seconds": wall,
        "float": metrics,
        "int8": report.figures["scorer"],
        "type_head": types,
        "type_head_int8": report.figures.get("classifier"),
        "type_head_refused": refused,
    }


def _cell(value: Any, fmt: str = "{:.3f}") -> str:
    return "-" if value is None else fmt.format(value)


def render(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of all data sets."""
    lines = [
        "| data set | settings chosen | search s / train s | image AUROC float / int8 | pixel AUROC float / int8 "
        "| PRO float / int8 | test false alarms at the int8 threshold | recall at it | expected FA rate "
        "| synthetic recall |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        f, q = row["float"], row["int8"]
        cm = f["confusion_matrix"]
        lines.append(
            f"| {row['name']} | {settings_text(f['settings'])} | {f['search_seconds']:.0f} / {f['train_seconds']:.0f} "
            f"| {_cell(f['image_auroc'])} / {_cell(q['auroc_export'])} "
            f"| {_cell(f.get('pixel_auroc'))} / {_cell(q.get('pixel_auroc_export'))} "
            f"| {_cell(f.get('pro'))} / {_cell(q.get('pro_export'))} "
            f"| {_cell(q['test_false_alarm_rate'])} (float: {cm[0][1]} of {sum(cm[0])}) "
            f"| {_cell(q['test_recall'])} (float: {_cell(f['recall'])}) "
            f"| {_cell(q['expected_false_alarm_rate'])} | {_cell(q['synthetic_recall'])} |"
        )
    return "\n".join(lines)


def render_types(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of the type head per data set."""
    lines = [
        "| data set | defect types | macro F1 as the line sees it (5-fold x 5 repeats, mean) "
        "| macro F1 of the types alone | confusion [true][predicted], good first "
        "| int8: macro F1 line / types (5-fold x 5, re-fitted) "
        "| int8 top-1 agreement with float | fit + CV s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        head, q = row.get("type_head"), row.get("type_head_int8") or {}
        if not head:
            lines.append(f"| {row['name']} | fewer than two: no type head | - | - | - | - | - | - |")
            continue
        exported = f"{_cell(q.get('macro_f1_export'))} / {_cell(q.get('types_macro_f1_export'))}"
        if row.get("type_head_refused"):
            exported = f"refused: {row['type_head_refused']}"
        lines.append(
            f"| {row['name']} | {', '.join(head['class_names'][1:])} | {head['macro_f1']:.3f} "
            f"| {head['types_macro_f1']:.3f} | {head['confusion_matrix']} | {exported} "
            f"| {_cell(q.get('top1_agreement'))} | {head['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write ``<out>/autoconfig.md``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--runs", type=Path, default=Path("runs/auto"))
    parser.add_argument("--bundles", type=Path, default=Path("bundles/auto"))
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--skip-training", action="store_true", help="export and tabulate the existing runs")
    args = parser.parse_args(argv)
    rows = []
    for name in args.datasets.split(","):
        if args.skip_training:
            rows.append(export_row(name, args.runs / name, args.bundles, None))
        else:
            rows.append(train_and_export(name, args.runs, args.bundles))
        (args.runs / name / "bench_row.json").write_text(json.dumps(rows[-1], default=str), encoding="utf-8")
        print(f"{name}: done", flush=True)
    done = {row["name"] for row in rows}
    for name in DATASETS:  # rows of data sets measured by an earlier run of this bench, kept in the table
        earlier = args.runs / name / "bench_row.json"
        if name not in done and earlier.is_file():
            rows.append(json.loads(earlier.read_text(encoding="utf-8")))
    rows.sort(key=lambda row: DATASETS.index(row["name"]) if row["name"] in DATASETS else len(DATASETS))
    text = f"{render(rows)}\n\n{render_types(rows)}\n\n{environment()} Command: `make bench-auto`.\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "autoconfig.md").write_text(text, encoding="utf-8")
    (args.out / "autoconfig.json").write_text(json.dumps(rows, indent=2, default=str), encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Does the settings search's objective pick what works on real defects? Synthetic figures against real test figures.

For each data set the search (:func:`training.autoconfig.run_search`) runs as in training: its candidates are judged
on held-out normals and synthetic defects. Here every candidate is then also scored on the test split, with the
search's own memory banks (built from its subset of training images, so these test figures sit below a full
training's): image AUROC and recall at the test normals' top 1 % and 5 % of scores. Beside the search's objective
(image AUROC + 0.5 pixel AUROC on synthetic defects) three low-false-alarm objectives are computed from the same
synthetic scores: the standardised partial AUROC to a false-alarm rate of 0.1, and the recall above the highest and
the second-highest held-out normal. Printed per data set: each objective's pick and its test figures, the rank
correlation of each with the test figures over all candidates, and what the search's tie band would pick at other
widths. Written to ``bench/results/search_objective.md``. The choice in training never reads test images; this
benchmark reads them to check the choice. Run with ``make bench-objective`` (about 20 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.train_bench import environment
from edge_agent.scoring import NearestNeighbourIndex, distance_map, image_score
from training import metrics
from training.autoconfig import TIE, Candidate, SettingsSearch, run_search
from training.config import load_train_config
from training.data import load_dataset, load_images

DATASETS = ("bottle", "tire", "casting")
TIES = (TIE, 0.005, 0.01)


def low_false_alarm_figures(normal: np.ndarray, defect: np.ndarray, max_rate: float = 0.1) -> dict[str, float]:
    """Partial AUROC to ``max_rate`` (mean recall above each of the top normals) and recall above the highest and
    the second-highest normal score."""
    ranked = np.sort(normal)[::-1]
    k = max(1, round(max_rate * len(normal)))
    return {
        "syn_pauc": float(np.mean([(defect > t).mean() for t in ranked[:k]])),
        "syn_recall_top1": float((defect > ranked[0]).mean()),
        "syn_recall_top2": float((defect > ranked[1]).mean()),
    }


def recall_at_rate(labels: np.ndarray, scores: np.ndarray, rate: float) -> float:
    """Recall above the test normals' score that leaves ``rate`` of them (at least one) above it."""
    normal = np.sort(scores[labels == 0])[::-1]
    k = max(1, int(np.floor(rate * len(normal))))
    return float((scores[labels == 1] > normal[k - 1]).mean())


def _bank_key(c: Candidate) -> tuple[Any, ...]:
    return (c.backbone, c.size, c.bank_rotations, c.coreset_ratio, c.whiten)


def test_figures(search: SettingsSearch, name: str) -> list[dict[str, Any]]:
    """Every candidate of ``search`` with its synthetic and test figures."""
    splits = load_dataset(load_train_config(f"configs/datasets/{name}.yaml").dataset)
    labels = np.array([s.label for s in splits.test])
    embedded: dict[tuple[str, int], np.ndarray] = {}
    distances: dict[tuple[Any, ...], np.ndarray] = {}
    n_normal = len(search.normals)
    rows = []
    for c, synthetic in zip(search.candidates, search.image_scores, strict=True):
        at = search.features[c.backbone, c.size]
        if (c.backbone, c.size) not in embedded:
            images, loaded = load_images(splits.test, at.scorer.spec, splits.skipped)
            if len(loaded) != len(splits.test):
                raise RuntimeError(f"{name}: {len(splits.test) - len(loaded)} test images did not load")
            embedded[c.backbone, c.size] = at.scorer.embed(images)
        if _bank_key(c) not in distances:
            bank = at.bank(c.bank_rotations, c.coreset_ratio, search.ratios[-1], c.whiten)
            index = NearestNeighbourIndex(bank, threads=2, whitening=at.whitening if c.whiten else None)
            distances[_bank_key(c)] = np.stack([index.distances(p) for p in embedded[c.backbone, c.size]])
        maps = (distance_map(d, at.grid, c.size, c.blur_sigma) for d in distances[_bank_key(c)])
        scores = np.array([image_score(m, c.score_top_fraction) for m in maps])
        rows.append(
            {
                "candidate": c,
                "objective": c.objective,
                "syn_auroc": c.image_auroc,
                "syn_pixel_auroc": c.pixel_auroc,
                **low_false_alarm_figures(synthetic[:n_normal], synthetic[n_normal:]),
                "test_auroc": metrics.roc_auc(labels, scores),
                "test_recall_1pct": recall_at_rate(labels, scores, 0.01),
                "test_recall_5pct": recall_at_rate(labels, scores, 0.05),
            }
        )
    return rows


def rank_correlation(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (ties broken by order)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _setting(c: Candidate) -> str:
    top = "max" if c.score_top_fraction is None else f"top {c.score_top_fraction:.0%}"
    turns = "/".join(map(str, c.bank_rotations)) or "none"
    white = ", whitened" if c.whiten else ""
    return f"{c.size} px, rot {turns}, {c.coreset_ratio:.0%} bank{white}, sigma {c.blur_sigma:g}, {top}"


def _pick_row(label: str, r: dict[str, Any]) -> str:
    return (
        f"| {label} | {_setting(r['candidate'])} | {r['objective']:.4f} | {r['syn_auroc']:.3f} | {r['syn_pauc']:.3f} "
        f"| {r['test_auroc']:.3f} | {r['test_recall_1pct']:.3f} | {r['test_recall_5pct']:.3f} |"
    )


def render(name: str, rows: list[dict[str, Any]], seconds: float) -> str:
    """Markdown section of one data set."""
    picks: list[tuple[str, Callable[[dict[str, Any]], float]]] = [
        ("search objective (shipped rule: best)", lambda r: r["objective"]),
        ("synthetic image AUROC", lambda r: r["syn_auroc"]),
        ("synthetic partial AUROC to FA 0.1", lambda r: r["syn_pauc"]),
        ("synthetic recall above the top normal", lambda r: r["syn_recall_top1"]),
        ("synthetic recall above the 2nd normal", lambda r: r["syn_recall_top2"]),
        ("(test AUROC: the best there was)", lambda r: r["test_auroc"]),
        ("(test recall at 5 %: the best there was)", lambda r: r["test_recall_5pct"]),
    ]
    best = max(r["objective"] for r in rows)
    lines = [
        f"### {name}: {len(rows)} candidates, search + test scoring {seconds:.0f} s",
        "",
        "| picked by | setting | objective | synthetic AUROC | synthetic pAUROC | test AUROC | test recall at 1 % FA "
        "| at 5 % FA |",
        "|---|---|---|---|---|---|---|---|",
        *(_pick_row(label, max(rows, key=key)) for label, key in picks),
    ]
    for tie in TIES:
        tied = [r["candidate"] for r in rows if r["objective"] >= best - tie]
        chosen = min(tied, key=lambda c: (c.cost, c.score_top_fraction is None, -c.objective))
        row = next(r for r in rows if r["candidate"] is chosen)
        lines.append(_pick_row(f"cheapest within {tie} of the best ({len(tied)} tied)", row))
    keys = ("objective", "syn_auroc", "syn_pixel_auroc", "syn_pauc", "syn_recall_top1", "syn_recall_top2")
    corr = " ".join(
        f"{k} {rank_correlation([r[k] for r in rows], [r['test_auroc'] for r in rows]):+.2f} / "
        f"{rank_correlation([r[k] for r in rows], [r['test_recall_5pct'] for r in rows]):+.2f};"
        for k in keys
    )
    lines += ["", f"Rank correlation over the candidates with test AUROC / test recall at 5 % FA: {corr}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the search and the test scoring per data set; write the Markdown and JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--datasets", default=",".join(DATASETS))
    args = parser.parse_args(argv)
    sections, dump = [], {}
    for name in args.datasets.split(","):
        started = time.perf_counter()
        cfg = load_train_config(f"configs/datasets/{name}.yaml")
        search = run_search(cfg, load_dataset(cfg.dataset))
        rows = test_figures(search, name)
        sections.append(render(name, rows, time.perf_counter() - started))
        print(sections[-1], flush=True)
        dump[name] = [{**r, "candidate": _setting(r["candidate"])} for r in rows]
    header = (
        "# Settings search: synthetic objectives against real test figures\n\n"
        "Banks of the search itself (its subset of training images), so test figures sit below a full training's. "
        "Recall at 1 % / 5 % FA: above the test normal that leaves 1 % / 5 % (at least one) of them above it.\n\n"
    )
    footer = f"{environment()} Command: `make bench-objective`.\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "search_objective.md").write_text(header + "\n".join(sections) + footer)
    (args.out / "search_objective.json").write_text(json.dumps(dump, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

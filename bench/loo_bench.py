"""Leave-one-out scores against held-out normals: which estimate of a new part's score the threshold should pool.

For each data set's PatchCore run of ``make bench-auto`` (``runs/auto/<set>/patchcore``, float Keras features) the
memory bank is rebuilt with the run's own settings (it must equal the stored bank), and every training image is
scored without its own bank rows, with their stand-ins, and at the midpoint of the two
(:func:`training.models.patchcore.leave_one_out_bounds`). Each is compared with the validation images' scores,
which no bank row came from: percentiles and the two-sample Kolmogorov-Smirnov distance. Then the threshold at
``threshold.false_alarm_rate`` over each estimate pooled with the validation scores, and the test split's false
alarms and recall at it. Written to ``bench/results/loo.md``. Run with ``make bench-loo`` after ``make bench-auto``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import keras
import numpy as np

from edge_agent.preprocess import PreprocessSpec
from edge_agent.scoring import false_alarm_threshold
from training.config import load_train_config
from training.data import load_dataset, load_images
from training.models.patchcore import MEMORY_BANK_FILE, PatchCoreScorer, build_memory_bank, leave_one_out_bounds
from training.train_anomaly import keras_forward

DATASETS = ("bottle", "tire", "casting")
PERCENTILES = (50, 90, 99, 100)
RATE = 0.01  # the default threshold.false_alarm_rate


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical distributions."""
    points = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(np.sort(a), points, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), points, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def measure(name: str, runs: Path) -> list[dict[str, object]]:
    """Rows of the table for one data set."""
    folder = runs / name / "patchcore"
    cal = json.loads((folder / "calibration.json").read_text(encoding="utf-8"))
    pre = json.loads((folder / "preprocess.json").read_text(encoding="utf-8"))
    cfg = load_train_config(Path(f"configs/datasets/{name}.yaml"))
    splits = load_dataset(cfg.dataset)
    spec = PreprocessSpec(**{k: pre[k] for k in ("size", "color", "resize", "offset", "scale")})
    backbone = keras.models.load_model(folder / "backbone.keras", compile=False)
    top = cal["score_top_fraction"]
    scorer = PatchCoreScorer(keras_forward(backbone), spec, cal["blur_sigma"], pool=cal["pool"], top_fraction=top)
    train, _ = load_images(splits.train, spec, splits.skipped)
    bank = build_memory_bank(scorer.embed, train, **cal["bank"])
    if not np.allclose(bank.rows, np.load(folder / MEMORY_BANK_FILE), atol=1e-3):
        raise SystemExit(f"{folder}: the rebuilt bank differs from the stored one; run make bench-auto first")
    scorer.set_bank(bank.rows, bank.whitening)
    assert scorer.grid is not None
    bounds = leave_one_out_bounds(scorer.embed(train), bank, scorer.grid, spec.size, cal["blur_sigma"], top)
    validation = scorer.score(load_images(splits.validation, spec)[0])[0]
    test_images, test_samples = load_images(splits.test, spec)
    test = scorer.score(test_images)[0]
    labels = np.array([s.label for s in test_samples])
    normal, defect = test[labels == 0], test[labels == 1]
    estimates = {"without own rows": bounds[0], "with stand-ins": bounds[1], "midpoint (shipped)": sum(bounds) / 2}
    rows = []
    for label, scores in estimates.items():
        threshold, _, _ = false_alarm_threshold(np.concatenate([scores, validation]), RATE)
        rows.append(
            {
                "set": name,
                "estimate": label,
                "percentiles": np.percentile(scores, PERCENTILES),
                "validation": np.percentile(validation, PERCENTILES),
                "ks": ks_distance(scores, validation),
                "threshold": threshold,
                "false_alarms": f"{int((normal >= threshold).sum())} of {len(normal)}",
                "recall": float((defect >= threshold).mean()),
                "n": f"{len(scores)} + {len(validation)}",
            }
        )
    return rows


def render(rows: list[dict[str, object]], rate: float) -> str:
    """The Markdown table."""
    pct = " / ".join(f"p{p}" for p in PERCENTILES)
    lines = [
        f"| set | training images scored | {pct} | validation {pct} | KS to validation | threshold at FA {rate:g} "
        "| test false alarms | test recall | scores pooled (train + validation) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = " / ".join(f"{v:.2f}" for v in r["percentiles"])  # type: ignore[attr-defined]
        v = " / ".join(f"{x:.2f}" for x in r["validation"])  # type: ignore[attr-defined]
        lines.append(
            f"| {r['set']} | {r['estimate']} | {p} | {v} | {r['ks']:.3f} | {r['threshold']:.3f} "
            f"| {r['false_alarms']} | {r['recall']:.3f} | {r['n']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and write ``<out>/loo.md``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--runs", type=Path, default=Path("runs/auto"))
    parser.add_argument("--datasets", default=",".join(DATASETS))
    args = parser.parse_args(argv)
    rows = [row for name in args.datasets.split(",") for row in measure(name, args.runs)]
    text = (
        "# Leave-one-out scores against held-out validation normals\n\n"
        + render(rows, RATE)
        + "\n\nFloat (Keras) features of the `make bench-auto` runs; banks rebuilt with each run's settings. "
        "Test figures at the threshold over each estimate pooled with the validation scores (the shipped int8 "
        "bundle fits its own threshold the same way on int8 features). Command: `make bench-loo`.\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loo.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

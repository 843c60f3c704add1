"""Command line: ``linewatch-train describe|train|evaluate|update --config configs/datasets/bottle.yaml``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from edge_agent.errors import LinewatchError
from training.config import TrainConfig, load_train_config
from training.data import load_dataset

log = logging.getLogger("training")
MODELS = ("patchcore", "autoencoder", "classifier")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="linewatch-train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("describe", "print the data set's statistics"),
        ("train", "train, calibrate and evaluate models; print the metrics table"),
        ("evaluate", "print the metrics table of trained model folders"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--config", required=True, type=Path, help="training YAML (configs/datasets/*.yaml)")
        cmd.add_argument("--out", type=Path, default=None, help="run folder (default <output_dir>/<dataset>)")
        cmd.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
        if name == "train":
            cmd.add_argument(
                "--no-auto", action="store_true", help="keep fixed PatchCore defaults: no search of the settings"
            )
            cmd.add_argument(
                "--search-budget", type=float, default=900.0, help="seconds the settings search may take (900)"
            )
    update = sub.add_parser("update", help="the next bundle version from reviewed frames (no retraining)")
    update.add_argument("--config", required=True, type=Path, help="the training YAML the bundle was made with")
    update.add_argument("--bundle", required=True, type=Path, help="the bundle the agents run now")
    update.add_argument(
        "--feedback", required=True, help="a review export folder, or the review database URL (sqlite:///...)"
    )
    update.add_argument("--media-root", type=Path, default=Path("."), help="where the review DB's image paths are")
    update.add_argument("--out", required=True, type=Path, help="folder of the new version (must not exist)")
    update.add_argument("--max-drop", type=float, default=0.01, help="largest test image AUROC drop allowed (0.01)")
    update.add_argument(
        "--min-defects", type=int, default=3, help="confirmed defects needed to re-fit the type head (3)"
    )
    return parser


def cmd_update(args: argparse.Namespace, cfg: TrainConfig) -> int:
    """Build and gate the next bundle version; print its report as JSON."""
    import json
    import tempfile

    from training.update import update_bundle

    feedback = args.feedback
    with tempfile.TemporaryDirectory(prefix="linewatch-feedback-") as tmp:
        if "://" in feedback:  # the review database: export its reviewed frames first
            from review.db import ReviewStore
            from review.export import export_dataset

            store = ReviewStore(feedback)
            try:
                export_dataset(store, Path(tmp) / "export", args.media_root)
            finally:
                store.close()
            feedback = str(Path(tmp) / "export")
        report = update_bundle(args.bundle, cfg, Path(feedback), args.out, args.max_drop, args.min_defects)
    print(json.dumps(report, indent=2, default=float))
    return 0


def _run_dir(cfg: TrainConfig, out: Path | None) -> Path:
    return out if out is not None else Path(cfg.output_dir) / cfg.dataset.name


def train(
    cfg: TrainConfig, run_dir: Path, models: list[str], auto: bool = True, budget_seconds: float = 900.0
) -> dict[str, dict]:
    """Train the requested models; each gets a folder under ``run_dir``; returns their metrics.

    ``auto`` lets PatchCore choose the settings its YAML section leaves open (``budget_seconds`` for the search).
    """
    from training.train_anomaly import train_autoencoder, train_patchcore

    splits = load_dataset(cfg.dataset)
    results: dict[str, dict] = {}
    if "patchcore" in models and cfg.patchcore.enabled:
        results["patchcore"] = train_patchcore(splits, cfg, run_dir / "patchcore", auto, budget_seconds)
    if "autoencoder" in models and cfg.autoencoder.enabled:
        results["autoencoder"] = train_autoencoder(splits, cfg, run_dir / "autoencoder")
    if "classifier" in models and cfg.classifier.enabled:
        from training.train_classifier import train_and_save
        from training.type_head import train_type_head

        if (run_dir / "patchcore" / "meta.json").is_file():
            result = train_type_head(splits, run_dir / "patchcore", run_dir / "type-head", cfg.classifier.folds)
            if result is not None:
                results["type-head"] = result
        cfg = classifier_follows_scorer(cfg, run_dir / "patchcore")
        for kind in ("transfer", "custom"):
            results[f"classifier-{kind}"] = train_and_save(kind, splits, cfg.classifier, run_dir / f"classifier-{kind}")
    return results


def classifier_follows_scorer(cfg: TrainConfig, patchcore_dir: Path) -> TrainConfig:
    """The classifier at the PatchCore run's input size when the YAML sets none, so both can share one graph."""
    from training.artifacts import read_json

    preprocess = patchcore_dir / "preprocess.json"
    if "size" in cfg.classifier.model_fields_set or not preprocess.is_file():
        return cfg
    size = int(read_json(preprocess)["size"])
    return cfg.model_copy(update={"classifier": cfg.classifier.model_copy(update={"size": size})})


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    logging.basicConfig(level=os.environ.get("LINEWATCH_LOG", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        cfg = load_train_config(args.config)
        if args.command == "update":
            return cmd_update(args, cfg)
        run_dir = _run_dir(cfg, args.out)
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = sorted(set(models) - set(MODELS))
        if unknown:
            print(f"error: unknown model(s) {unknown}; choose from {list(MODELS)}", file=sys.stderr)
            return 2
        if args.command == "describe":
            from training.describe import describe

            print(describe(load_dataset(cfg.dataset)))
            return 0
        if args.command == "train":
            train(cfg, run_dir, models, not args.no_auto, args.search_budget)
        from training.report import markdown_table, read_run

        print(markdown_table(cfg.dataset.name, read_run(run_dir)))
    except (LinewatchError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

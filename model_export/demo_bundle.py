"""Build the demo bundle with the project's own code: train on MVTec AD bottle, export int8, verify.

The defect type comes from the type head (``training.type_head``); the transfer classifier where a data set has
fewer than two defect types.

Does nothing when a bundle that verifies is already there. ``python -m model_export.demo_bundle``.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from edge_agent.bundle import load_bundle
from edge_agent.errors import BundleError

log = logging.getLogger("model_export.demo")


def ensure_demo_bundle(config: Path, run_dir: Path, out: Path, with_classifier: bool = True) -> Path:
    """Return ``out`` once it holds a verified bundle, training and exporting it first if needed."""
    try:
        bundle = load_bundle(out)
    except BundleError as err:
        log.info("building the demo bundle (%s)", err)
    else:
        log.info("demo bundle %s %s is ready (%s)", bundle.name, bundle.version, bundle.digest)
        return out
    from model_export.export import export_bundle
    from training.config import load_train_config
    from training.data import load_dataset
    from training.train_anomaly import train_patchcore

    cfg = load_train_config(config)
    splits = load_dataset(cfg.dataset)
    if not (run_dir / "patchcore" / "meta.json").is_file():
        train_patchcore(splits, cfg, run_dir / "patchcore")
    classifier = None
    if with_classifier and cfg.classifier.enabled:
        classifier = "type-head"
        if not (run_dir / classifier / "meta.json").is_file():
            from training.type_head import train_type_head

            if train_type_head(splits, run_dir / "patchcore", run_dir / classifier, cfg.classifier.folds) is None:
                classifier = "classifier-transfer"
    if classifier == "classifier-transfer" and not (run_dir / classifier / "meta.json").is_file():
        from training.cli import classifier_follows_scorer
        from training.train_classifier import train_and_save

        cfg = classifier_follows_scorer(cfg, run_dir / "patchcore")
        train_and_save("transfer", splits, cfg.classifier, run_dir / classifier)
    report = export_bundle(run_dir, cfg, out, "int8", "patchcore", classifier)
    for role, figures in report.figures.items():
        log.info("exported %s: %s", role, {k: v for k, v in figures.items() if not isinstance(v, str)})
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, default=Path("configs/datasets/bottle.yaml"))
    parser.add_argument("--run", type=Path, default=Path("runs/demo-bottle"))
    parser.add_argument("--out", type=Path, default=Path("bundles/demo-bottle"))
    parser.add_argument("--no-classifier", action="store_true", help="scorer only (faster)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LINEWATCH_LOG", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    ensure_demo_bundle(args.config, args.run, args.out, not args.no_classifier)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

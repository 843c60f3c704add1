"""Command line: ``linewatch-export --config CONFIG.yaml --run runs/<dataset> --out bundles/<dataset>``.

Exits non-zero, writing no bundle, when the parity gate fails; prints which model and by how much.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from edge_agent.errors import LinewatchError
from training.config import load_train_config


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = argparse.ArgumentParser(prog="linewatch-export", description=__doc__)
    parser.add_argument("--config", required=True, type=Path, help="training YAML of the data set")
    parser.add_argument("--run", required=True, type=Path, help="run folder holding the model folders")
    parser.add_argument("--out", required=True, type=Path, help="bundle folder to write")
    parser.add_argument("--precision", choices=["int8", "float16", "float32"], default="int8")
    parser.add_argument("--scorer", default="patchcore", help="model folder of the anomaly scorer")
    parser.add_argument(
        "--classifier",
        default="auto",
        help="defect-type model folder: auto (type-head, else classifier-transfer), or '' for none",
    )
    parser.add_argument("--max-auroc-drop", type=float, default=0.01, help="parity gate on image AUROC")
    parser.add_argument("--min-agreement", type=float, default=0.9, help="parity gate on classifier top-1")
    parser.add_argument(
        "--separate-graphs", action="store_true", help="give the classifier its own graph even when it could share"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LINEWATCH_LOG", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    from model_export.export import ParityError, export_bundle

    try:
        cfg = load_train_config(args.config)
        report = export_bundle(
            args.run,
            cfg,
            args.out,
            args.precision,
            args.scorer,
            args.classifier or None,
            args.max_auroc_drop,
            args.min_agreement,
            share_backbone=not args.separate_graphs,
        )
    except ParityError as err:
        print(f"export FAILED, no bundle written: {err}", file=sys.stderr)
        return 3
    except (LinewatchError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"bundle": str(report.bundle), "figures": report.figures}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

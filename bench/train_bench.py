"""Training/evaluation benchmark: every model on bottle, tire and casting; one Markdown table per data set.

Each model trains in its own process so that its peak memory is its own. Run with ``make bench``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from training.report import markdown_table, read_run

DATASETS = ("bottle", "tire", "casting")
MODELS = ("patchcore", "autoencoder", "classifier")


def run_model(dataset: str, model: str, run_dir: Path) -> float:
    """Train one model of one data set in a child process; returns its wall time in seconds."""
    cmd = [sys.executable, "-m", "training.cli", "train", "--config", f"configs/datasets/{dataset}.yaml"]
    cmd += ["--out", str(run_dir), "--models", model]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "LINEWATCH_LOG": "WARNING"}, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def environment() -> str:
    """One line describing where the figures were measured."""
    import tensorflow as tf

    return (
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()} with "
        f"{os.cpu_count()} CPU cores, Python {platform.python_version()}, TensorFlow {tf.__version__}."
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write ``<out>/<dataset>.md``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--runs", type=Path, default=Path("runs/bench"))
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    env_line = environment()
    for dataset in args.datasets.split(","):
        run_dir = args.runs / dataset
        for model in args.models.split(","):
            seconds = run_model(dataset, model, run_dir)
            print(f"{dataset}/{model}: {seconds:.0f} s", flush=True)
        table = markdown_table(dataset, read_run(run_dir))
        text = f"{table}\n\n{env_line} Command: `make bench`.\n"
        (args.out / f"{dataset}.md").write_text(text, encoding="utf-8")
        print(text, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Shared fixtures: the real data sets beside the repo, the committed downscaled images, and a small real
bottle run (PatchCore, autoencoder, type head) + int8 bundle (scorer and type head in one graph) built once per
session (integration and review tests share it)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE_IMAGES = REPO / "tests" / "fixtures" / "images"


def datasets_path() -> Path:
    """Data sets folder: $LINEWATCH_DATASETS or ../shared/datasets beside the repo (``training.config``'s rule)."""
    from training.config import datasets_root  # pydantic and YAML only, not the training stack

    return datasets_root()


@pytest.fixture(scope="session")
def datasets_root() -> Path:
    """The real data sets; a missing folder FAILS the test (CI must have ../shared beside the clone)."""
    root = datasets_path()
    if not (root / "mvtec_ad" / "bottle" / "train" / "good").is_dir():
        pytest.fail(f"real data sets not found at {root}: put ../shared beside the repo or set LINEWATCH_DATASETS")
    return root


@pytest.fixture(scope="session")
def fixture_images() -> Path:
    """Folder of small committed images (downscaled bottle, tire and casting)."""
    return FIXTURE_IMAGES


BOTTLE_CONFIG = """
dataset: {name: bottle, layout: mvtec, root: mvtec_ad/bottle, val_fraction: 0.15}
# the search chooses blur and score rule; whitening is fixed on so that every later stage runs the whitened path
patchcore: {backbone: efficientnet_lite0, size: 224, coreset_ratio: 0.01, bank_rotations: [], whiten: true}
autoencoder: {size: 64, epochs: 2, base_filters: 8, latent_channels: 16, augment: {hflip: true}}
heatmap_samples: 4
"""


@pytest.fixture(scope="session")
def bottle_config(tmp_path_factory, datasets_root):
    path = tmp_path_factory.mktemp("config") / "bottle.yaml"
    path.write_text(BOTTLE_CONFIG)
    return path


@pytest.fixture(scope="session")
def bottle_run(tmp_path_factory, bottle_config):
    from training.cli import main  # imported here: unit tests never load the training stack
    from training.config import load_train_config
    from training.data import load_dataset
    from training.type_head import DEEP_TAP, train_type_head

    run = tmp_path_factory.mktemp("bottle") / "run"
    assert main(["train", "--config", str(bottle_config), "--out", str(run), "--models", "patchcore,autoencoder"]) == 0
    splits = load_dataset(load_train_config(bottle_config).dataset)  # the defect types, as `train` fits them
    # stage 7 only, so that the session bundle carries a type tail (test_export covers the last-tap head)
    assert train_type_head(splits, run / "patchcore", run / "type-head", folds=2, deep_taps=(DEEP_TAP,)) is not None
    return run


@pytest.fixture(scope="session")
def bottle_bundle(bottle_run, bottle_config, tmp_path_factory):
    from model_export.cli import main as export_main

    out = tmp_path_factory.mktemp("bundles") / "bottle"
    args = ["--config", str(bottle_config), "--run", str(bottle_run), "--out", str(out)]  # classifier: the type head
    assert export_main(args) == 0
    return out

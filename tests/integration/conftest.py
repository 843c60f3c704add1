"""A small but real bottle run shared by the integration tests (trained once per session)."""

from __future__ import annotations

import pytest

from model_export.cli import main as export_main
from training.cli import main

BOTTLE_CONFIG = """
dataset: {name: bottle, layout: mvtec, root: mvtec_ad/bottle, val_fraction: 0.15}
patchcore: {size: 224, coreset_ratio: 0.01}
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
    run = tmp_path_factory.mktemp("bottle") / "run"
    assert main(["train", "--config", str(bottle_config), "--out", str(run), "--models", "patchcore,autoencoder"]) == 0
    return run


@pytest.fixture(scope="session")
def bottle_bundle(bottle_run, bottle_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "bottle"
    args = ["--config", str(bottle_config), "--run", str(bottle_run), "--out", str(out), "--classifier", ""]
    assert export_main(args) == 0
    return out

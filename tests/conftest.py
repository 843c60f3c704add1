"""Shared fixtures: the real data sets beside the repo, and the committed downscaled images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE_IMAGES = REPO / "tests" / "fixtures" / "images"


def datasets_path() -> Path:
    """Data sets folder: $LINEWATCH_DATASETS or ../shared/datasets beside the repo."""
    return Path(os.environ.get("LINEWATCH_DATASETS", REPO.parent / "shared" / "datasets"))


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

"""Disk faults on the image side: a (nearly) full file system and a read-only heatmap folder.

Verdicts live in the database on another file system; they must still be stored, with a clear error, when
heatmaps and image copies cannot be written. Real file systems: a small tmpfs (mounted read-only for the second
case) when this process may mount, else a real folder made unwritable with chmod (non-root).
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge_agent.bundle import load_bundle
from edge_agent.config import CameraConfig
from edge_agent.inspector import Inspector
from edge_agent.pipeline import CameraPipeline, FreeSpaceGuard, Outputs
from edge_agent.preprocess import read_image
from edge_agent.records import Frame
from edge_agent.store import Store
from tests.harness import small_fs


@pytest.fixture(scope="module")
def inspector(bottle_bundle):
    return Inspector(load_bundle(bottle_bundle), threads=2)


@pytest.fixture(scope="module")
def defective(datasets_root):
    paths = sorted((datasets_root / "mvtec_ad/bottle/test/broken_large").glob("*.png"))[:6]
    return [(p, read_image(p)) for p in paths]


def run_frames(tmp_path: Path, data_dir: Path, inspector, images, min_free_mb: int = 0):
    store = Store(f"sqlite:///{tmp_path / 'agent.db'}")
    cam = CameraConfig.model_validate(
        {"id": "cam1", "bundle": "unused", "source": {"type": "folder", "path": str(tmp_path)}}
    )
    pipeline = CameraPipeline(cam, inspector, store, Outputs("it", None, None), data_dir, min_free_mb=min_free_mb)
    verdicts = []
    for path, image in images:
        frame = Frame("cam1", "folder", path.name, datetime.now(UTC), str(path))
        verdicts.append(pipeline.process(frame, image))
    rows = store.counts(None)
    store.close()
    return pipeline, verdicts, rows


def test_full_disk_skips_images_keeps_verdicts(tmp_path, inspector, defective, caplog):
    caplog.set_level(logging.ERROR)
    with small_fs(tmp_path / "small", 2048) as mounted:
        if mounted is None:  # no mount here: ask for more room than the real file system has
            free_mb = FreeSpaceGuard(tmp_path, 0).free_bytes() // 2**20
            data_dir, min_free = tmp_path / "data", free_mb + 1024
        else:
            data_dir, min_free = mounted, 1  # 2 MiB: a few files fit, then less than 1 MiB is free
        pipeline, verdicts, rows = run_frames(tmp_path, data_dir, inspector, defective, min_free_mb=min_free)
    assert rows == {"cam1": {"frames": 6, "anomalies": 6}}
    assert all(v is not None and v.anomalous for v in verdicts)
    skipped = [v for v in verdicts if v.heatmap_path is None]
    assert skipped, "the guard never tripped"
    assert pipeline.space.skipped == len(skipped)
    assert all(v.image_path == v.frame_id or v.image_path.endswith(v.frame_id) for v in skipped)  # source path
    assert "disk almost full" in caplog.text and "verdicts still stored" in caplog.text


def test_read_only_heatmap_folder_keeps_verdicts(tmp_path, inspector, defective, caplog):
    caplog.set_level(logging.ERROR)
    data_dir = tmp_path / "data"
    with small_fs(data_dir / "heatmaps", 1024, read_only=True) as mounted:
        if mounted is None:
            if os.geteuid() == 0:
                pytest.fail("running as root without permission to mount: cannot make a folder read-only")
            (data_dir / "heatmaps").chmod(0o555)
        _, verdicts, rows = run_frames(tmp_path, data_dir, inspector, defective)
    assert rows == {"cam1": {"frames": 6, "anomalies": 6}}
    assert all(v is not None and v.heatmap_path is None for v in verdicts)
    assert all(v.image_path and Path(v.image_path).is_file() for v in verdicts)  # copies go to images/: writable
    assert caplog.text.count("heatmap not saved") == 6
    assert "Read-only file system" in caplog.text or "Permission denied" in caplog.text

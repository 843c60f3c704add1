"""The original of an anomalous frame is kept under ``data_dir``: a hard link where the folder camera moves or
deletes scored files (one copy on disk), a copy where the file stays in the camera's folder or linking fails."""

from __future__ import annotations

import errno
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge_agent.bundle import load_bundle
from edge_agent.config import CameraConfig
from edge_agent.inspector import Inspector
from edge_agent.pipeline import CameraPipeline, Outputs
from edge_agent.preprocess import read_image
from edge_agent.records import Frame
from edge_agent.store import Store


@pytest.fixture(scope="module")
def inspector(bottle_bundle):
    return Inspector(load_bundle(bottle_bundle), threads=1)


def _keep(
    tmp_path: Path, inspector: Inspector, datasets_root: Path, after: str, source: str = "folder"
) -> tuple[Path, Path]:
    """Score one defective bottle image dropped into a folder camera with ``after`` (handed over by ``source``);
    (the file, its kept original)."""
    incoming = tmp_path / "in"
    incoming.mkdir()
    dropped = incoming / "frame.png"
    shutil.copyfile(datasets_root / "mvtec_ad/bottle/test/broken_large/000.png", dropped)
    cam = CameraConfig.model_validate(
        {"id": "cam", "bundle": "unused", "source": {"type": "folder", "path": str(incoming), "after": after}}
    )
    store = Store(f"sqlite:///{tmp_path / 'agent.db'}")
    pipeline = CameraPipeline(cam, inspector, store, Outputs("it", None, None), tmp_path / "data")
    captured = datetime.fromtimestamp(dropped.stat().st_mtime, UTC)
    verdict = pipeline.process(Frame(cam.id, source, "frame.png", captured, str(dropped)), read_image(dropped))
    store.close()
    assert verdict is not None and verdict.anomalous and verdict.image_path
    kept = Path(verdict.image_path)
    assert kept.is_relative_to(tmp_path / "data" / "images") and kept.read_bytes() == dropped.read_bytes()
    return dropped, kept


@pytest.mark.parametrize("after", ["move", "delete"])
def test_moved_or_deleted_files_are_kept_as_a_link(tmp_path, inspector, datasets_root, after):
    dropped, kept = _keep(tmp_path, inspector, datasets_root, after)
    assert os.path.samefile(dropped, kept) and kept.stat().st_nlink == 2
    data = dropped.read_bytes()
    dropped.unlink()  # what the source does next (a move keeps the inode too)
    assert kept.read_bytes() == data and kept.stat().st_nlink == 1


def test_kept_files_are_copied(tmp_path, inspector, datasets_root):
    dropped, kept = _keep(tmp_path, inspector, datasets_root, "keep")
    assert not os.path.samefile(dropped, kept)
    dropped.write_bytes(b"the camera wrote this name again")  # the copy does not change with it
    assert kept.read_bytes() != dropped.read_bytes() and read_image(kept).shape == (512, 512, 3)


def test_a_refused_link_falls_back_to_a_copy(tmp_path, inspector, datasets_root, monkeypatch):
    def cross_device(*args, **kwargs):  # data_dir on another file system: the kernel refuses the link
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    dropped, kept = _keep(tmp_path, inspector, datasets_root, "move")
    assert not os.path.samefile(dropped, kept) and kept.stat().st_nlink == 1


def test_replayed_files_are_copied(tmp_path, inspector, datasets_root):
    """``edge_agent replay`` hands over someone else's files, even through a camera that moves its own."""
    dropped, kept = _keep(tmp_path, inspector, datasets_root, "move", source="replay")
    assert not os.path.samefile(dropped, kept)

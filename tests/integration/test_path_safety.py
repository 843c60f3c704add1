"""Hostile file names and frame ids, symlinks and swapped folders: nothing is written outside its folder.

The folder source alone (no model needed) for links and races; the real agent with the int8 bottle bundle for
names, since heatmap and original-copy file names are derived from frame ids.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import cv2
import pytest

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig, FolderSourceConfig
from edge_agent.records import Frame
from edge_agent.sources.folder import SYMLINK_REASON, FolderSource
from tests.harness import wait_until

SAFE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
HOSTILE_NAMES = [
    "day1/x.png",  # with "day1_x.png": one name once made file-name safe
    "day1_x.png",
    "-rf.png",
    "--help.png",
    "with space.png",
    "a..b.png",
    "x..png",
    "ünïcødé 画像.png",
    "画" * 83 + ".png",  # 253 bytes
    "N" * 251 + ".png",  # 255 bytes, the longest name Linux allows
    "P" * 185 + "_1.png",  # the same first 180 characters
    "P" * 185 + "_2.png",
    "back\\slash\\..\\..\\evil.png",
    "new\nline.png",
    "evil.png;rm -rf *",  # (a name ending in ~ is an editor backup: ignored)
]


def tree(folder: Path) -> set[str]:
    """Every path under ``folder`` (links not followed), relative."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, name), folder))
    return out


def collect(src: FolderSource, n: int, timeout: float = 10.0) -> list:
    stop = threading.Event()
    timer = threading.Timer(timeout, stop.set)
    timer.start()
    got = []
    try:
        for item in src.items(stop, timeout=0.05):
            got.append(item)
            src.done(item, ok=item.image is not None)
            if len(got) >= n:
                break
    finally:
        timer.cancel()
    return got


@pytest.fixture
def bottles(datasets_root):
    """Distinct real bottle images (so that an overwritten copy shows)."""
    test = datasets_root / "mvtec_ad" / "bottle" / "test"
    return sorted(test.glob("good/*.png"))[:8] + sorted(test.glob("broken_large/*.png"))[:8]


# --- the folder source: links and a folder swapped while a file is being scored --------------------------------------


@pytest.mark.parametrize("recursive", [False, True])
def test_symlinked_folders_are_not_followed(tmp_path, bottles, recursive):
    root, outside = tmp_path / "cam", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    shutil.copyfile(bottles[0], outside / "secret.png")
    shutil.copyfile(bottles[1], root / "sub" / "real.png")
    shutil.copyfile(bottles[2], root / "top.png")
    (root / "out_link").symlink_to(outside, target_is_directory=True)
    (root / "in_link").symlink_to(root / "sub", target_is_directory=True)
    src = FolderSource("cam", FolderSourceConfig(path=root, recursive=recursive, stable_seconds=0.05, poll_seconds=0.1))
    try:
        expected = {"top.png", "sub/real.png"} if recursive else {"top.png", "out_link", "in_link"}
        items = {i.frame.frame_id: i for i in collect(src, len(expected))}
        time.sleep(0.4)  # a few more scans: nothing else may show up
        assert collect(src, 1, timeout=0.3) == []
    finally:
        src.stop()
    assert set(items) == expected
    for fid, item in items.items():
        if fid.endswith("_link"):  # non-recursive: a link is an entry of its own, quarantined as a link
            assert item.image is None and item.error == SYMLINK_REASON
            assert (root / "quarantine" / fid).is_symlink()
        else:
            assert item.image is not None
    assert tree(outside) == {"secret.png"} and (outside / "secret.png").read_bytes() == bottles[0].read_bytes()


@pytest.mark.parametrize("outcome", ["move", "delete", "quarantine"])
def test_a_folder_swapped_for_a_link_mid_scoring_is_not_written_through(tmp_path, bottles, outcome, caplog):
    """sub/ is replaced by a link to another folder between hand-out and done(): nothing there is touched."""
    root, outside = tmp_path / "cam", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    shutil.copyfile(bottles[0], root / "sub" / "x.png")
    shutil.copyfile(bottles[1], outside / "x.png")
    after = "delete" if outcome == "delete" else "move"
    cfg = FolderSourceConfig(path=root, recursive=True, after=after, stable_seconds=0.05, poll_seconds=0.1)
    src = FolderSource("cam", cfg, retry_seconds=3600)
    stop = threading.Event()
    items = src.items(stop, timeout=0.05)
    try:
        item = next(items)
        assert item.frame.frame_id == "sub/x.png"
        shutil.rmtree(root / "sub")
        (root / "sub").symlink_to(outside, target_is_directory=True)
        src.done(item, ok=outcome != "quarantine")  # must neither raise nor follow the link
    finally:
        stop.set()
        items.close()
        src.stop()
    assert tree(outside) == {"x.png"} and (outside / "x.png").read_bytes() == bottles[1].read_bytes()
    assert tree(root) <= {"sub", "done", "quarantine"}
    assert "outside" in caplog.text or "not in the subpath" in caplog.text


def test_hostile_names_are_moved_inside_done(tmp_path, bottles):
    root = tmp_path / "cam"
    root.mkdir()
    flat = [n for n in HOSTILE_NAMES if "/" not in n]
    for name, image in zip(flat, bottles, strict=False):
        shutil.copyfile(image, root / name)
    before = tree(tmp_path)
    src = FolderSource("cam", FolderSourceConfig(path=root, stable_seconds=0.05, poll_seconds=0.1))
    try:
        items = collect(src, len(flat))
    finally:
        src.stop()
    assert sorted(i.frame.frame_id for i in items) == sorted(flat)
    assert all(i.image is not None for i in items)
    assert sorted(os.listdir(root / "done")) == sorted(flat)
    new = tree(tmp_path) - before
    assert all(p.startswith(os.path.join("cam", "done")) for p in new), sorted(new)


# --- the real agent: file names derived from frame ids ------------------------------------------------------------


def _agent(tmp_path: Path, bundle: Path, incoming: Path) -> Agent:
    cfg = AgentConfig.model_validate(
        {
            "agent": {"name": "paths", "data_dir": str(tmp_path / "data"), "min_free_mb": 0},
            "database": {"url": f"sqlite:///{tmp_path / 'agent.db'}"},
            "cameras": [
                {
                    "id": "cam1",
                    "bundle": str(bundle),
                    "threshold": -1e9,  # every frame anomalous: a heatmap and an original copy for each
                    "save_heatmaps": "all",
                    "source": {"type": "folder", "path": str(incoming), "recursive": True, "stable_seconds": 0.1},
                }
            ],
            "metrics": {"enabled": False},
        }
    )
    return Agent(cfg)


def _check_derived(path_text: str | None, folder: Path) -> Path:
    assert path_text, "no file written"
    path = Path(path_text)
    assert path.resolve().parent.parent.parent == folder.resolve(), path  # <folder>/<camera>/<day>/<name>
    assert SAFE.match(path.name) and len(os.fsencode(path.name)) <= 255, path.name
    assert path.is_file()
    return path


def test_hostile_file_names_through_the_agent(tmp_path, bottle_bundle, bottles):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    sources = {}
    for name, image in zip(HOSTILE_NAMES, bottles, strict=False):
        (incoming / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, incoming / name)
        sources[name] = image.read_bytes()
    agent = _agent(tmp_path, bottle_bundle, incoming)
    agent.start()
    try:
        frames = lambda: agent.store.counts(None).get("cam1", {}).get("frames", 0)  # noqa: E731
        wait_until(lambda: frames() >= len(HOSTILE_NAMES), 120, "a verdict for every hostile name")
    finally:
        agent.stop()
    rows = sqlite3.connect(tmp_path / "agent.db").execute("SELECT frame_id, heatmap_path, image_path FROM verdicts")
    rows = {fid: (heatmap, image) for fid, heatmap, image in rows}
    assert sorted(rows) == sorted(HOSTILE_NAMES)
    heatmaps = {fid: _check_derived(h, tmp_path / "data" / "heatmaps") for fid, (h, _) in rows.items()}
    copies = {fid: _check_derived(i, tmp_path / "data" / "images") for fid, (_, i) in rows.items()}
    assert len(set(heatmaps.values())) == len(rows), "two frames share a heatmap file"
    assert len(set(copies.values())) == len(rows), "two frames share an original copy"
    for fid, copy in copies.items():
        assert copy.read_bytes() == sources[fid], f"the copy of {fid!r} holds another frame's image"
        assert (incoming / "done" / fid).read_bytes() == sources[fid]
    assert set(os.listdir(tmp_path)) <= {"agent.db", "agent.db-wal", "agent.db-shm", "data", "incoming"}
    assert tree(incoming) - {"day1"} == {f"done/{n}" for n in HOSTILE_NAMES} | {"done", "done/day1"}
    assert {p.split(os.sep)[0] for p in tree(tmp_path / "data")} == {"heatmaps", "images"}


@pytest.mark.parametrize(
    "frame_id",
    [
        "../../../../etc/passwd",
        "/abs/evil.png",
        "..",
        ".",
        "",
        "-",
        "--rf",
        "a/../../b.png",
        "x" * 1000,
        "C:\\Windows\\evil.png",
        "nul\x00byte.png",
        "ünï/../画像.jpg",
        "\n",
        ".hidden",
    ],
)
def test_hostile_frame_ids_stay_inside_the_data_folder(tmp_path, bottle_bundle, bottles, frame_id, caplog):
    caplog.set_level(logging.ERROR)
    agent = _agent(tmp_path, bottle_bundle, tmp_path / "incoming")
    rgb = cv2.cvtColor(cv2.imread(str(bottles[0])), cv2.COLOR_BGR2RGB)
    try:
        frame = Frame("cam1", "stream", frame_id, datetime(2025, 6, 7, tzinfo=UTC), None)
        verdict = agent.cameras[0].pipeline.process(frame, rgb)
    finally:
        agent.stop(flush_seconds=0.1)
    assert verdict is not None and verdict.frame_id == frame_id
    _check_derived(verdict.heatmap_path, tmp_path / "data" / "heatmaps")
    _check_derived(verdict.image_path, tmp_path / "data" / "images")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert sorted(tree(tmp_path / "data")) == sorted(
        {"heatmaps", "heatmaps/cam1", "heatmaps/cam1/2025-06-07", "images", "images/cam1", "images/cam1/2025-06-07"}
        | {f"heatmaps/cam1/2025-06-07/{Path(verdict.heatmap_path).name}"}
        | {f"images/cam1/2025-06-07/{Path(verdict.image_path).name}"}
    )

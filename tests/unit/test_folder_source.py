"""FolderSource against a real directory: events, rescans, complete-file detection, after-actions, hostile names."""

from __future__ import annotations

import os
import shutil
import threading
import time
from datetime import UTC
from pathlib import Path

import cv2
import pytest

from edge_agent.config import FolderSourceConfig
from edge_agent.sources.base import SourceItem
from edge_agent.sources.folder import SYMLINK_REASON, FolderSource, relative_inside

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "images"
BOTTLE = FIXTURES / "bottle_good_000.png"
TIRE = FIXTURES / "tire_good_000.png"
CASTING = FIXTURES / "casting_ok.jpeg"


def make(path: Path, **kw) -> FolderSource:
    kw.setdefault("stable_seconds", 0.15)
    kw.setdefault("poll_seconds", 0.1)
    opts = {k: kw.pop(k) for k in ("is_known", "watch_events", "retry_seconds", "min_side") if k in kw}
    return FolderSource("cam1", FolderSourceConfig(path=path, **kw), **opts)


def collect(src: FolderSource, n: int, timeout: float = 5.0, done: bool = True, delay: float = 0.0):
    """Consume like the agent does: done(ok=decoded) after each item; stop after n items or the timeout."""
    stop = threading.Event()
    timer = threading.Timer(timeout, stop.set)
    timer.start()
    got: list[SourceItem] = []
    try:
        for item in src.items(stop, timeout=0.05):
            got.append(item)
            time.sleep(delay)
            if done:
                src.done(item, ok=item.image is not None)
            if len(got) >= n:
                break
    finally:
        timer.cancel()
    return got


def settle(src: FolderSource, seconds: float = 0.5) -> list[SourceItem]:
    """Items that (wrongly) show up during ``seconds``."""
    return collect(src, 10**6, timeout=seconds)


@pytest.fixture
def watched(tmp_path: Path):
    root = tmp_path / "cam"
    root.mkdir()
    sources: list[FolderSource] = []
    yield root, sources
    for src in sources:
        src.stop()


def put(dst: Path, src: Path = BOTTLE, mtime: float | None = None) -> Path:
    shutil.copyfile(src, dst)
    if mtime is not None:
        os.utime(dst, (mtime, mtime))
    return dst


def test_files_present_at_start_oldest_first_and_moved(watched):
    root, sources = watched
    now = time.time()
    put(root / "c.png", BOTTLE, now - 10)
    put(root / "a.png", TIRE, now - 30)
    put(root / "b.jpeg", CASTING, now - 20)
    src = make(root)
    sources.append(src)
    items = collect(src, 3)
    assert [i.frame.frame_id for i in items] == ["a.png", "b.jpeg", "c.png"]
    first = items[0]
    assert first.error is None and first.image.dtype.name == "uint8"
    assert first.image.shape == cv2.imread(str(TIRE)).shape
    assert first.frame.captured_at.tzinfo is UTC and abs(first.frame.captured_at.timestamp() - (now - 30)) < 1e-3
    assert first.frame.image_path == str(root.resolve() / "a.png") and first.frame.source == "folder"
    assert sorted(p.name for p in (root / "done").iterdir()) == ["a.png", "b.jpeg", "c.png"]
    assert sorted(p.name for p in root.iterdir()) == ["done"]
    assert src.state == "online"


def test_new_file_picked_up_by_event_not_by_rescan(watched):
    root, sources = watched
    src = make(root, poll_seconds=60.0, stable_seconds=30.0)  # only the close-after-write event can be this quick
    sources.append(src)
    assert settle(src, 0.3) == []
    put(root / "new.png")
    t0 = time.monotonic()
    items = collect(src, 1, timeout=5.0)
    assert [i.frame.frame_id for i in items] == ["new.png"] and items[0].image is not None
    assert time.monotonic() - t0 < 5.0


def test_file_moved_in_is_picked_up(watched, tmp_path):
    root, sources = watched
    src = make(root, poll_seconds=60.0, stable_seconds=0.1)
    sources.append(src)
    settle(src, 0.2)
    staged = put(tmp_path / "staged.png")
    staged.rename(root / "moved in.png")
    assert [i.frame.frame_id for i in collect(src, 1)] == ["moved in.png"]


def test_slowly_written_file_read_once_complete(watched):
    root, sources = watched
    data = BOTTLE.read_bytes()
    src = make(root, stable_seconds=0.6, poll_seconds=0.05, watch_events=False)
    sources.append(src)
    got: list[SourceItem] = []
    consumer = threading.Thread(target=lambda: got.extend(collect(src, 2, timeout=1.8)))
    consumer.start()
    with open(root / "slow.png", "wb") as fh:
        for chunk in (data[:1000], data[1000 : len(data) // 2], data[len(data) // 2 :]):
            fh.write(chunk)
            fh.flush()
            time.sleep(0.25)
    consumer.join()
    assert len(got) == 1, [(i.frame.frame_id, i.error) for i in got]
    assert got[0].error is None and got[0].image.shape == (128, 128, 3)


def test_slowly_written_file_with_events(watched):
    root, sources = watched
    data = BOTTLE.read_bytes()
    src = make(root, stable_seconds=0.6, poll_seconds=0.05)
    sources.append(src)
    got: list[SourceItem] = []
    consumer = threading.Thread(target=lambda: got.extend(collect(src, 2, timeout=1.2)))
    consumer.start()
    with open(root / "slow.png", "wb") as fh:
        fh.write(data[:2000])
        fh.flush()
        time.sleep(0.3)
        fh.write(data[2000:])
    consumer.join()
    assert len(got) == 1 and got[0].error is None


def test_unreadable_files_quarantined_with_reason(watched):
    root, sources = watched
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    (root / "truncated.png").write_bytes(BOTTLE.read_bytes()[:300])
    src = make(root)
    sources.append(src)
    items = collect(src, 3)
    assert {i.frame.frame_id for i in items} == {"empty.png", "notes.txt", "truncated.png"}
    assert all(i.image is None and i.error for i in items)
    q = root / "quarantine"
    assert sorted(p.name for p in q.iterdir()) == sorted(
        [f"{n}{s}" for n in ("empty.png", "notes.txt", "truncated.png") for s in ("", ".reason.txt")]
    )
    assert "empty file" in (q / "empty.png.reason.txt").read_text()
    assert "not a decodable image" in (q / "truncated.png.reason.txt").read_text()
    assert (q / "notes.txt").read_text() == "not an image"
    assert sorted(p.name for p in root.iterdir()) == ["quarantine"]


def test_move_avoids_overwrite_and_keeps_subfolders(watched):
    root, sources = watched
    done = root / "done"
    (done / "sub").mkdir(parents=True)
    (done / "a.png").write_text("older a")
    (done / "a-1.png").write_text("older a-1")
    (done / "sub" / "b.png").write_text("older b")
    put(root / "a.png")
    (root / "sub").mkdir()
    put(root / "sub" / "b.png")
    src = make(root, recursive=True)
    sources.append(src)
    assert sorted(i.frame.frame_id for i in collect(src, 2)) == ["a.png", "sub/b.png"]
    assert (done / "a.png").read_text() == "older a" and (done / "a-1.png").read_text() == "older a-1"
    assert (done / "a-2.png").read_bytes() == BOTTLE.read_bytes()
    assert (done / "sub" / "b-1.png").read_bytes() == BOTTLE.read_bytes()
    assert settle(src, 0.3) == []  # the done folder itself is never watched


def test_custom_done_dir_outside(watched, tmp_path):
    root, sources = watched
    put(root / "x.png")
    src = make(root, done_dir=tmp_path / "archive")
    sources.append(src)
    collect(src, 1)
    assert (tmp_path / "archive" / "x.png").is_file() and not (root / "x.png").exists()


def test_delete(watched):
    root, sources = watched
    for n in range(3):
        put(root / f"{n}.png")
    src = make(root, after="delete")
    sources.append(src)
    assert len(collect(src, 3)) == 3
    assert list(root.iterdir()) == []


def test_keep_scores_once_and_rescores_reused_name(watched):
    root, sources = watched
    put(root / "k.png")
    src = make(root, after="keep")
    sources.append(src)
    assert [i.frame.frame_id for i in collect(src, 1)] == ["k.png"]
    assert settle(src, 0.5) == []  # several rescans later: still remembered
    assert (root / "k.png").is_file()
    (root / "k.png").unlink()
    settle(src, 0.3)  # forgotten once gone, so the same name written again is new
    put(root / "k.png", TIRE)
    assert [i.image.shape for i in collect(src, 1)] == [cv2.imread(str(TIRE)).shape]


def test_is_known_skips_frames_scored_before_restart(watched):
    root, sources = watched
    old = time.time() - 60
    put(root / "scored.png", mtime=old)
    put(root / "fresh.png", mtime=old)
    asked: list[str] = []

    def is_known(fid: str) -> bool:
        asked.append(fid)
        return fid == "scored.png"

    src = make(root, is_known=is_known)
    sources.append(src)
    items = collect(src, 1)
    assert [i.frame.frame_id for i in items] == ["fresh.png"]
    assert items[0].frame.is_new  # looked up here: the pipeline need not look it up again
    assert settle(src, 0.3) == []
    assert (root / "done" / "scored.png").is_file() and "scored.png" in asked


def test_item_not_done_is_retried_later(watched):
    root, sources = watched
    put(root / "r.png")
    src = make(root, after="keep", retry_seconds=0.3)
    sources.append(src)
    first = collect(src, 1, done=False)
    again = collect(src, 1, timeout=3.0)
    assert [i.frame.frame_id for i in first + again] == ["r.png", "r.png"]


@pytest.mark.parametrize(
    "name",
    ["with space.png", "ünïcødé 画像 ✓.png", "L" * 247 + ".png", "semi;colon$dollar'quote.png"],
)
def test_odd_names(watched, name):
    root, sources = watched
    done = root / "done"
    done.mkdir()
    put(done / name)  # forces a collision, so the suffixed name must still fit 255 bytes
    put(root / name)
    src = make(root)
    sources.append(src)
    items = collect(src, 1)
    assert [i.frame.frame_id for i in items] == [name] and items[0].image is not None
    moved = sorted(p.name for p in done.iterdir())
    assert len(moved) == 2 and all(len(os.fsencode(m)) <= 255 for m in moved)


def test_long_name_quarantine_reason_fits(watched):
    root, sources = watched
    name = "Q" * 250 + ".png"
    (root / name).write_bytes(b"garbage")
    src = make(root)
    sources.append(src)
    assert collect(src, 1)[0].error
    names = sorted(p.name for p in (root / "quarantine").iterdir())
    assert name in names and any(n.endswith(".reason.txt") and len(n) <= 255 for n in names)


def test_symlinks_not_followed(watched, tmp_path):
    root, sources = watched
    outside = put(tmp_path / "secret.png")
    inside = put(root / "real.png")
    (root / "to_outside.png").symlink_to(outside)
    (root / "to_inside.png").symlink_to(inside)
    src = make(root)
    sources.append(src)
    items = {i.frame.frame_id: i for i in collect(src, 3)}
    assert set(items) == {"real.png", "to_outside.png", "to_inside.png"}
    for fid in ("to_outside.png", "to_inside.png"):
        assert items[fid].image is None and items[fid].error == SYMLINK_REASON
        assert (root / "quarantine" / fid).is_symlink()
        assert (root / "quarantine" / f"{fid}.reason.txt").read_text().strip() == SYMLINK_REASON
    assert items["real.png"].image is not None
    assert outside.read_bytes() == BOTTLE.read_bytes()


def test_ignored_names_and_special_files(watched):
    root, sources = watched
    for name in (".hidden.png", "upload.png.tmp", "upload.part", "backup.png~"):
        put(root / name)
    os.mkfifo(root / "pipe.png")
    (root / "subdir").mkdir()
    put(root / "subdir" / "nested.png")  # not recursive
    (root / ".cache").mkdir()
    put(root / "ok.png")
    src = make(root)
    sources.append(src)
    assert [i.frame.frame_id for i in collect(src, 1)] == ["ok.png"]
    assert settle(src, 0.4) == []


def test_recursive_skips_hidden_dirs_and_picks_new_subdir(watched):
    root, sources = watched
    (root / ".trash").mkdir()
    put(root / ".trash" / "x.png")
    src = make(root, recursive=True, poll_seconds=0.2)
    sources.append(src)
    assert settle(src, 0.3) == []
    (root / "day1").mkdir()
    put(root / "day1" / "p.png")
    assert [i.frame.frame_id for i in collect(src, 1)] == ["day1/p.png"]


def test_relative_inside_rejects_escapes(tmp_path):
    root = (tmp_path / "cam").resolve()
    (root / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (root / "linkdir").symlink_to(tmp_path / "elsewhere")
    assert relative_inside(root, root / "a.png", False) == "a.png"
    assert relative_inside(root, root / "sub" / "a.png", True) == "sub/a.png"
    assert relative_inside(root, root / "sub" / "a.png", False) is None
    assert relative_inside(root, root / ".." / "a.png", True) is None
    assert relative_inside(root, root / "sub" / ".." / ".." / "a.png", True) is None
    assert relative_inside(root, root / "sub" / "..", True) is None
    assert relative_inside(root, root / "linkdir" / "a.png", True) is None
    assert relative_inside(root, root / "sub" / ".." / "a.png", False) == "a.png"


def test_back_pressure_bounded_queue_loses_nothing(watched):
    root, sources = watched
    now = time.time()
    for n in range(20):
        put(root / f"img{n:02d}.png", mtime=now - 100 + n)
    src = make(root, max_pending=2)
    sources.append(src)
    items = collect(src, 20, timeout=15.0, delay=0.01)
    assert [i.frame.frame_id for i in items] == [f"img{n:02d}.png" for n in range(20)]
    assert src.max_queued == 2
    assert len(list((root / "done").iterdir())) == 20


def test_missing_folder_offline_then_online(tmp_path):
    root = tmp_path / "late"
    states: list[str] = []
    src = make(root)
    src.on_state(states.append)
    try:
        assert settle(src, 0.3) == [] and src.state == "offline"
        root.mkdir()
        put(root / "a.png")
        assert [i.frame.frame_id for i in collect(src, 1)] == ["a.png"]
        assert states[-1] == "online"
    finally:
        src.stop()


def test_non_utf8_name_gets_printable_id_and_is_moved(watched):
    root, sources = watched
    raw = os.fsencode(root) + b"/bad\xff name.png"
    shutil.copyfile(BOTTLE, raw)
    src = make(root)
    sources.append(src)
    items = collect(src, 1)
    assert items[0].frame.frame_id == "bad\\xff name.png" and items[0].image is not None
    items[0].frame.frame_id.encode("utf-8")  # safe for the database, JSON and MQTT
    assert os.listdir(os.fsencode(root / "done")) == [b"bad\xff name.png"]


def test_a_slow_move_is_not_offered_again(watched, monkeypatch, caplog):
    """done() holds the file's claim until it is moved: rescans during a slow move must not offer it twice."""
    import edge_agent.sources.folder as folder_module

    root, sources = watched
    real_move = folder_module.move_unique

    def slow_move(src, dest):
        time.sleep(0.6)  # six rescans (poll 0.1 s) while the file is still in the camera folder
        return real_move(src, dest)

    monkeypatch.setattr(folder_module, "move_unique", slow_move)
    put(root / "a.png")
    src = make(root, stable_seconds=0.0, after="move", done_dir=root.parent / "done")
    sources.append(src)
    got = collect(src, 10, timeout=2.0)
    assert [i.frame.frame_id for i in got] == ["a.png"]
    assert (root.parent / "done" / "a.png").is_file() and not (root / "a.png").exists()
    assert "not done" not in caplog.text


def test_large_jpeg_decoded_reduced_to_the_models_side(watched):
    root, sources = watched
    big = cv2.resize(cv2.imread(str(BOTTLE)), (1024, 768))
    assert cv2.imwrite(str(root / "big.jpg"), big)
    src = make(root, min_side=lambda: 256)
    sources.append(src)
    src.start()
    (item,) = collect(src, 1)
    assert item.image is not None and item.image.shape == (384, 512, 3)

"""StreamSource: real OpenCV on real MJPG/AVI files; fake captures only for stalls, garbage and crashes."""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from datetime import UTC
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.config import StreamSourceConfig
from edge_agent.sources.base import SourceItem
from edge_agent.sources.stream import StreamSource, backoff_delays, redact_url

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "images"
SIZE = (128, 128)  # width, height


def real_frames() -> list[np.ndarray]:
    """BGR frames from the committed bottle and tire images (all resized to one size)."""
    names = ["bottle_good_000.png", "tire_good_000.png", "bottle_broken_large_000.png"]
    frames = [cv2.resize(cv2.imread(str(FIXTURES / n)), SIZE) for n in names]
    assert all(f is not None for f in frames)
    return frames


def write_avi(path: Path, n_frames: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, SIZE)
    assert writer.isOpened()
    for frame in itertools.islice(itertools.cycle(real_frames()), n_frames):
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("videos")
    out = {n: write_avi(root / f"clip{n}.avi", n) for n in (10, 30, 60)}
    cap = cv2.VideoCapture(str(out[30]))
    count = sum(1 for _ in iter(lambda: cap.read()[0], False))
    cap.release()
    assert count == 30, "OpenCV must read back every frame it wrote"
    return out


def cfg(url: str, **kw) -> StreamSourceConfig:
    kw.setdefault("reconnect_min_seconds", 0.05)
    kw.setdefault("reconnect_max_seconds", 0.4)
    return StreamSourceConfig(url=url, **kw)


def run(src: StreamSource, limit: int = 10**6, timeout: float = 10.0, delay: float = 0.0, until=None):
    """Consume items until the source ends, ``limit`` items, ``until(item)``, or ``timeout``; then stop it."""
    stop = threading.Event()
    timer = threading.Timer(timeout, stop.set)
    timer.start()
    got: list[SourceItem] = []
    try:
        for item in src.items(stop, timeout=0.05):
            got.append(item)
            time.sleep(delay)
            if len(got) >= limit or (until is not None and until(item)):
                break
    finally:
        timer.cancel()
        src.stop()
    return got


def test_avi_every_nth_reads_whole_file_then_ends(videos):
    states: list[str] = []
    src = StreamSource("cam1", cfg(str(videos[30]), every_nth=2))
    src.on_state(states.append)
    t0 = time.monotonic()
    items = run(src, delay=0.002)  # a slow consumer: a file waits for it, nothing is dropped
    assert len(items) == 15 and time.monotonic() - t0 < 5.0
    assert states == ["online", "ended"] and src.state == "ended"
    first = items[0]
    assert first.error is None and first.frame.image_path is None and first.frame.source == "stream"
    assert first.frame.captured_at.tzinfo is UTC
    # a video file's frames are named by their index (every 2nd frame here), so a restart re-finds them
    assert [i.frame.frame_id for i in items] == [f"clip30.avi#{n:07d}" for n in range(0, 30, 2)]
    assert not any(i.frame.is_new for i in items)  # the pipeline looks each one up in the database
    assert first.image.shape == (128, 128, 3) and first.image.dtype == np.uint8
    bottle, tire, _ = (cv2.cvtColor(f, cv2.COLOR_BGR2RGB).astype(int) for f in real_frames())
    diff = np.abs(first.image.astype(int) - bottle).mean()  # frame 0 is the bottle; MJPG is lossy
    assert diff < 4
    assert diff < np.abs(first.image.astype(int) - bottle[:, :, ::-1]).mean()  # RGB, not BGR
    assert np.abs(items[2].image.astype(int) - tire).mean() < 4  # frame 4 of the bottle, tire, broken cycle
    assert np.abs(items[2].image.astype(int) - bottle).mean() > 10 * diff


@pytest.mark.parametrize(("every_nth", "expected"), [(1, 30), (4, 8), (30, 1), (31, 1)])
def test_every_nth_counts(videos, every_nth, expected):
    assert len(run(StreamSource("cam1", cfg(str(videos[30]), every_nth=every_nth)))) == expected


def test_max_fps_caps_frame_count(videos):
    t0 = time.monotonic()
    items = run(StreamSource("cam1", cfg(str(videos[60]), max_fps=20.0)), delay=0.005)
    elapsed = time.monotonic() - t0
    assert 1 <= len(items) <= elapsed * 20.0 + 2
    assert len(items) < 60


def test_loop_restarts_the_file(videos):
    src = StreamSource("cam1", cfg(str(videos[10]), loop=True))
    items = run(src, limit=25)
    assert len(items) == 25 and src.state != "ended"
    assert all(re.fullmatch(r"\d{13}-\d+", i.frame.frame_id) for i in items)  # looping: named by time
    assert all(i.frame.is_new for i in items)  # a name made now has no verdict: no database look-up
    assert len({i.frame.frame_id for i in items}) == 25


def test_missing_url_goes_offline_and_backs_off(tmp_path):
    calls: list[float] = []

    def factory(source):
        calls.append(time.monotonic())
        return cv2.VideoCapture(source)  # real OpenCV, a file that does not exist

    src = StreamSource("cam1", cfg(str(tmp_path / "missing.avi")), factory, rand=lambda: 0.0)
    assert run(src, timeout=1.2) == []
    assert src.state == "offline"
    delays = list(src.retry_delays)
    assert delays[:5] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.4])
    gaps = np.diff(calls)
    assert len(calls) >= 4 and all(g >= d * 0.9 for g, d in zip(gaps, delays, strict=False))


def test_backoff_sequence_grows_with_jitter_and_cap():
    seq = list(itertools.islice(backoff_delays(1.0, 30.0, jitter=0.25), 12))
    assert all(0.75 * min(30.0, 2**i) <= d <= min(30.0, 2**i) for i, d in enumerate(seq))
    assert all(b > a for a, b in itertools.pairwise(seq[:5]))  # grows strictly until the cap
    assert list(itertools.islice(backoff_delays(5.0, 2.0, rand=lambda: 0.0), 2)) == [2.0, 2.0]


class FakeCapture:
    """Plays a script of (ok, frame) reads; ``block`` makes read() hang like a dead network peer."""

    def __init__(self, script, opened=True, block: threading.Event | None = None, raise_at: int | None = None):
        self.script = list(script)
        self.opened = opened
        self.block = block
        self.raise_at = raise_at
        self.reads = 0
        self.released = threading.Event()

    def isOpened(self):  # noqa: N802
        return self.opened

    def read(self):
        self.reads += 1
        if self.raise_at is not None and self.reads == self.raise_at:
            raise RuntimeError("backend crashed")
        if self.script:
            return self.script.pop(0)
        if self.block is not None:
            self.block.wait(10.0)
        return False, None

    def release(self):
        self.released.set()


def good(h=64, w=64, c=3, value=100):
    return True, np.full((h, w, c), value, np.uint8)


def test_garbage_frames_skipped_and_resolution_change_accepted(tmp_path, caplog):
    video = tmp_path / "fake.avi"
    video.write_bytes(b"x")  # a real file path: its end means "ended", not "failed"
    script = [
        (True, None),
        (True, np.zeros((0, 0, 3), np.uint8)),
        (True, np.zeros((8, 8, 3), np.float32)),
        (True, np.zeros((8, 8, 2), np.uint8)),
        good(64, 64),
        (True, np.zeros((8, 8, 5), np.uint8)),
        (True, "not an array"),
        good(48, 32),
        (True, np.full((40, 40), 7, np.uint8)),  # gray is fine
        good(48, 32, 4),  # BGRA too
    ]
    fake = FakeCapture(script)
    src = StreamSource("cam1", cfg(str(video)), lambda source: fake)
    with caplog.at_level(logging.INFO, logger="edge_agent.sources.stream"):
        items = run(src)
    assert [i.image.shape for i in items] == [(64, 64, 3), (48, 32, 3), (40, 40, 3), (48, 32, 3)]
    assert src.garbage_frames == 6 and src.state == "ended" and fake.released.is_set()
    assert sum("resolution changed" in r.getMessage() for r in caplog.records) == 1


def test_read_exception_and_open_failure_survived():
    caps = iter([FakeCapture([good(value=1)], raise_at=2), FakeCapture([], opened=False), FakeCapture([good(value=3)])])
    states: list[str] = []
    src = StreamSource("cam1", cfg("rtsp://user:secret@camera/stream"), lambda source: next(caps, FakeCapture([])))
    src.on_state(states.append)
    items = run(src, timeout=5.0, until=lambda item: item.image[0, 0, 0] == 3)
    assert items[-1].image[0, 0, 0] == 3  # the frame before the crash may be overwritten (live stream)
    assert states[:3] == ["online", "offline", "online"]


def test_stall_releases_and_reconnects():
    block = threading.Event()
    first = FakeCapture([good(value=1)] * 3, block=block)
    second = FakeCapture([good(value=2)] * 3, block=block)
    opened: list[object] = []

    def factory(source):
        cap = [first, second][min(len(opened), 1)] if len(opened) < 2 else FakeCapture([], opened=False)
        opened.append(source)
        return cap

    states: list[str] = []
    src = StreamSource("cam1", cfg("rtsp://camera/stream", stall_seconds=0.3), factory)
    src.on_state(states.append)
    try:
        items = run(src, timeout=5.0, until=lambda item: item.image[0, 0, 0] == 2)
    finally:
        block.set()
    assert states[:3] == ["online", "stalled", "online"]
    assert items[-1].image[0, 0, 0] == 2 and len(opened) >= 2
    assert first.released.wait(2.0)  # released by its reader once the hung read returned


def test_live_stream_keeps_only_latest_frame():
    # a live camera: 50 frames, then it waits for the next one (no end of stream, so no reconnect and replay)
    no_more = threading.Event()
    capture = FakeCapture([good(value=v) for v in range(50)], opened=True, block=no_more)
    src = StreamSource("cam1", cfg("rtsp://camera/live"), lambda source: capture)
    stop = threading.Event()
    src.start()
    deadline = time.monotonic() + 10.0
    while capture.reads <= 50 and time.monotonic() < deadline:  # the reader runs ahead of a consumer not reading
        time.sleep(0.01)
    item = next(src.items(stop, timeout=1.0))
    no_more.set()
    src.stop()
    assert capture.reads > 50
    assert item.image[0, 0, 0] == 49 and src.dropped_frames >= 40


def test_camera_index_and_redaction():
    seen: list[object] = []
    src = StreamSource("cam1", cfg("0"), lambda source: seen.append(source) or FakeCapture([], opened=False))
    assert src.source == 0
    run(src, timeout=0.2)
    assert seen and seen[0] == 0
    assert redact_url("rtsp://admin:pw@10.0.0.5:554/h264") == "rtsp://***@10.0.0.5:554/h264"

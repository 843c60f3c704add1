"""Stream source: any OpenCV VideoCapture (RTSP/HTTP URL, video file, camera index) with reconnect and stall watch.

A reader thread per connection fills a one-frame buffer; a supervisor thread opens, watches for stalls and
reconnects with paced exponential back-off. A live stream overwrites the buffer (scoring never lags behind the
camera); a video file waits for the consumer instead, so every selected frame of a file is delivered.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Literal, Protocol

import cv2
import numpy as np

from edge_agent.backoff import backoff_delays
from edge_agent.config import StreamSourceConfig
from edge_agent.preprocess import to_rgb_uint8
from edge_agent.records import Frame
from edge_agent.sources.base import Source, SourceItem

log = logging.getLogger(__name__)

Outcome = Literal["ended", "failed", "stalled", "halt"]


class Capture(Protocol):
    """The part of ``cv2.VideoCapture`` the source uses."""

    def isOpened(self) -> bool: ...  # noqa: N802, D102

    def read(self) -> tuple[bool, np.ndarray | None]: ...  # noqa: D102

    def release(self) -> None: ...  # noqa: D102


def open_capture(source: str | int, timeout_s: float = 10.0) -> cv2.VideoCapture:
    """Open with OpenCV; network URLs get open and read timeouts so a dead peer cannot block for ever."""
    if isinstance(source, str) and "://" in source:
        ms = int(timeout_s * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        return cv2.VideoCapture(source, cv2.CAP_ANY, params)
    return cv2.VideoCapture(source)


def redact_url(url: str) -> str:
    """Hide ``user:password@`` in a URL before it is logged."""
    return re.sub(r"//[^/@]*@", "//***@", url)


def garbage_reason(image: object) -> str | None:
    """Why a captured frame is unusable (None, empty, wrong type or channel count), or None when it is fine."""
    if not isinstance(image, np.ndarray):
        return f"not an image ({type(image).__name__})"
    if image.size == 0:
        return f"empty frame {image.shape}"
    if image.dtype not in (np.uint8, np.uint16):
        return f"pixel type {image.dtype}"
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4)):
        return None
    return f"unexpected shape {image.shape}"


class _Slot:
    """One-item buffer between the reader and the consumer."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: SourceItem | None = None
        self.closed = False
        self.dropped = 0

    def put(self, item: SourceItem, wait: bool, keep_going: Callable[[], bool]) -> None:
        with self._cond:
            while wait and self._item is not None:
                if not keep_going():
                    return
                self._cond.wait(0.1)
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._cond.notify_all()

    def get(self, timeout: float) -> SourceItem | None:
        with self._cond:
            if self._item is None and not self.closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            self._cond.notify_all()
            return item

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class _Conn:
    """One open capture and its reader thread's progress."""

    def __init__(self, cap: Capture, is_file: bool) -> None:
        self.cap = cap
        self.is_file = is_file
        self.cancelled = threading.Event()
        self.finished = threading.Event()
        self.outcome: Outcome = "failed"
        self.frames = 0
        self.position = 0  # frames read from this connection, bad ones included (a video file's frame index)
        self.last_progress = time.monotonic()


class StreamSource(Source):
    """Frames of an OpenCV capture, every Nth and at most ``max_fps``; reconnects and reports its state.

    ``capture_factory(source)`` opens the capture (``source`` is an int for a camera index); tests inject fakes.
    """

    def __init__(
        self,
        camera_id: str,
        cfg: StreamSourceConfig,
        capture_factory: Callable[[str | int], Capture] | None = None,
        *,
        rand: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(camera_id)
        self.cfg = cfg
        self._factory = capture_factory or (lambda source: open_capture(source, cfg.stall_seconds))
        self._rand = rand
        self.garbage_frames = 0
        self.retry_delays: deque[float] = deque(maxlen=64)  # recent reconnect delays, for diagnostics
        self._slot = _Slot()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._counter = itertools.count(1)
        self._shape: tuple[int, ...] | None = None
        self._shape_logged = False

    @property
    def source(self) -> str | int:
        """What is passed to the capture factory: an int for an all-digit URL (camera index)."""
        return int(self.cfg.url) if self.cfg.url.isdigit() else self.cfg.url

    @property
    def dropped_frames(self) -> int:
        """Frames overwritten in the buffer before the consumer took them (live streams only)."""
        return self._slot.dropped

    def start(self) -> None:
        """Start the supervisor thread (it opens the capture). Idempotent."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._supervise, name=f"stream-{self.camera}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop reading and release the capture; ``items`` returns."""
        self._halt.set()
        self._slot.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    def done(self, item: SourceItem, ok: bool) -> None:
        """Nothing to do: a stream keeps nothing on disk."""

    def items(self, stop: threading.Event, timeout: float = 0.5) -> Iterator[SourceItem]:
        """Yield the latest frames until ``stop`` is set or the video file ended (without ``loop``)."""
        self.start()
        while not stop.is_set() and not self._halt.is_set():
            item = self._slot.get(timeout)
            if item is not None:
                yield item
            elif self._slot.closed:
                return

    # -- supervisor ----------------------------------------------------------------------------------------------

    def _delays(self) -> Iterator[float]:
        return backoff_delays(self.cfg.reconnect_min_seconds, self.cfg.reconnect_max_seconds, rand=self._rand)

    def _supervise(self) -> None:
        delays = self._delays()
        while not self._halt.is_set():
            conn = self._connect()
            outcome: Outcome = "failed" if conn is None else self._watch(conn)
            if conn is not None and conn.frames:
                delays = self._delays()  # a connection that delivered frames resets the back-off
            if outcome == "halt" or self._halt.is_set():
                break
            if outcome == "ended":
                if not self.cfg.loop:
                    log.info("camera=%s video ended", self.camera)
                    self._set_state("ended")
                    self._slot.close()
                    return
                if conn is not None and conn.frames:
                    continue  # loop: reopen at once
            self._set_state("stalled" if outcome == "stalled" else "offline")
            delay = next(delays)
            self.retry_delays.append(delay)
            log.info("camera=%s %s, reconnecting in %.1fs", self.camera, outcome, delay)
            self._halt.wait(delay)

    def _connect(self) -> _Conn | None:
        source = self.source
        cap: Capture | None = None
        try:
            cap = self._factory(source)
            if cap is not None and cap.isOpened():
                return _Conn(cap, isinstance(source, str) and os.path.isfile(source))
        except Exception as err:  # a factory or backend error is one failed attempt, never a crash
            log.debug("camera=%s open raised %s", self.camera, err)
        if cap is not None:
            _release(cap)
        log.warning("camera=%s cannot open %s", self.camera, redact_url(str(source)))
        return None

    def _watch(self, conn: _Conn) -> Outcome:
        """Run a reader for ``conn`` and wait until it ends, stalls (abandoned, not joined) or we halt."""
        reader = threading.Thread(target=self._read_loop, args=(conn,), name=f"read-{self.camera}", daemon=True)
        reader.start()
        tick = min(0.1, self.cfg.stall_seconds / 4)
        while not self._halt.is_set():
            if conn.finished.wait(tick):
                return conn.outcome
            if time.monotonic() - conn.last_progress > self.cfg.stall_seconds:
                log.warning("camera=%s no frame for %.1fs: stalled", self.camera, self.cfg.stall_seconds)
                conn.cancelled.set()  # the reader releases the capture when its read returns
                return "stalled"
        conn.cancelled.set()
        return "halt"

    # -- reader --------------------------------------------------------------------------------------------------

    def _read_loop(self, conn: _Conn) -> None:
        count, last_emit = 0, float("-inf")
        min_gap = 1.0 / self.cfg.max_fps if self.cfg.max_fps else 0.0

        def keep_going() -> bool:
            conn.last_progress = time.monotonic()  # waiting for the consumer is not a stall
            return not conn.cancelled.is_set() and not self._halt.is_set()

        try:
            while not conn.cancelled.is_set() and not self._halt.is_set():
                ok, image = conn.cap.read()
                if conn.cancelled.is_set():
                    break
                if not ok:
                    conn.outcome = "ended" if conn.is_file else "failed"
                    break
                conn.position += 1
                if not self._accept(image) or image is None:  # None is garbage too (_accept counted it)
                    continue
                conn.frames += 1
                conn.last_progress = time.monotonic()
                self._set_state("online")
                count += 1
                if (count - 1) % self.cfg.every_nth or conn.last_progress - last_emit < min_gap:
                    continue
                last_emit = conn.last_progress
                self._slot.put(self._item(image, conn), wait=conn.is_file, keep_going=keep_going)
        except Exception:  # a backend crash ends this connection; the supervisor reconnects
            log.exception("camera=%s capture read failed", self.camera)
            conn.outcome = "failed"
        finally:
            _release(conn.cap)
            conn.finished.set()

    def _accept(self, image: object) -> bool:
        """Skip garbage with a counted warning; accept (and log once) a resolution change."""
        reason = garbage_reason(image)
        if reason is not None:
            self.garbage_frames += 1
            if self.garbage_frames == 1 or self.garbage_frames % 100 == 0:
                log.warning("camera=%s skipped %d bad frame(s), latest: %s", self.camera, self.garbage_frames, reason)
            return False
        shape = image.shape  # type: ignore[attr-defined]
        if self._shape is not None and shape != self._shape and not self._shape_logged:
            log.info("camera=%s resolution changed %s -> %s", self.camera, self._shape, shape)
            self._shape_logged = True
        self._shape = shape
        return True

    def _item(self, image: np.ndarray, conn: _Conn) -> SourceItem:
        """A live frame is named by its capture time; a video file's frame by its index, so that a restarted
        agent recognises the frames it already scored (one verdict per frame, not per playback)."""
        captured = datetime.now(UTC)
        replayable = conn.is_file and not self.cfg.loop
        if replayable:
            frame_id = f"{os.path.basename(str(self.source))}#{conn.position - 1:07d}"
        else:
            frame_id = f"{int(captured.timestamp() * 1000)}-{next(self._counter)}"
        frame = Frame(self.camera, "stream", frame_id, captured, None, is_new=not replayable)
        return SourceItem(frame, to_rgb_uint8(image), None)


def _release(cap: Capture) -> None:
    try:
        cap.release()
    except Exception:
        log.debug("capture release failed", exc_info=True)

"""Folder source: watch a directory for complete image files; move, delete or keep each one once scored.

Filesystem events (watchdog) make new files show up at once; a rescan every ``poll_seconds`` is the safety net
for missed events and for network shares. Files wait on disk, so back-pressure (a bounded queue) loses nothing.
"""

from __future__ import annotations

import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from edge_agent.config import FolderSourceConfig
from edge_agent.preprocess import decode_image
from edge_agent.records import Frame
from edge_agent.sources.base import Source, SourceItem
from edge_agent.sources.files import (
    SYMLINK_REASON,
    fit_name,
    is_ignored_name,
    move_unique,
    read_regular,
    relative_inside,
)

log = logging.getLogger(__name__)


class _QuietShutdownRace(logging.Filter):
    """watchdog logs an ERROR when its inotify reader is stopped mid-read; that race is harmless at shutdown."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


logging.getLogger("watchdog.observers.inotify").addFilter(_QuietShutdownRace())


class _Events(FileSystemEventHandler):
    """Turns watchdog events into hints for the scanner; a closed-after-write file is ready at once."""

    def __init__(self, hint: Callable[[str | None, bool], None]) -> None:
        self._hint = hint

    def on_created(self, event: FileSystemEvent) -> None:
        self._hint(None if event.is_directory else os.fsdecode(event.src_path), False)

    def on_moved(self, event: FileSystemEvent) -> None:
        self._hint(None if event.is_directory else os.fsdecode(event.dest_path), False)

    def on_closed(self, event: FileSystemEvent) -> None:
        self._hint(os.fsdecode(event.src_path), True)


class FolderSource(Source):
    """Yields complete image files of a folder, oldest first; ``done`` then moves, deletes or keeps them.

    ``is_known(frame_id)`` (the store) skips files already scored before a restart; it is asked only about
    files older than the source's start, so a re-used file name written later is scored again.
    """

    def __init__(
        self,
        camera_id: str,
        cfg: FolderSourceConfig,
        is_known: Callable[[str], bool] | None = None,
        *,
        watch_events: bool = True,
        retry_seconds: float = 30.0,
        min_side: Callable[[], int | None] | None = None,
    ) -> None:
        super().__init__(camera_id)
        self.min_side = min_side or (lambda: None)  # the models' input side: large JPEGs are decoded reduced
        self.cfg = cfg
        self.root = cfg.path.resolve()
        self.done_dir = (cfg.done_dir or cfg.path / "done").resolve()
        self.quarantine_dir = (cfg.quarantine_dir or cfg.path / "quarantine").resolve()
        self.is_known = is_known
        self.watch_events = watch_events
        self.retry_seconds = retry_seconds
        self.max_queued = 0  # high-water mark of the pending queue
        self._queue: queue.Queue[tuple[str, Path]] = queue.Queue(maxsize=cfg.max_pending)
        self._lock = threading.Lock()
        self._claimed: dict[str, Path] = {}  # queued or being scored
        self._processed: set[str] = set()  # scored and kept on disk (after=keep, or a failed move)
        self._retry_at: dict[str, float] = {}  # handed out but never done: retry later
        self._hints: dict[str, bool] = {}  # path -> closed-after-write
        self._hint_limit = max(1024, 4 * cfg.max_pending)
        self._full_scan = True
        self._watching: dict[str, tuple[tuple[int, int, int], float]] = {}  # path -> (size, mtime, inode), since
        self._wake = threading.Event()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer: BaseObserver | None = None
        self._started_ns = time.time_ns()

    def start(self) -> None:
        """Start the scanner thread (it starts the watcher once the folder exists)."""
        if self._thread is None:
            self._started_ns = time.time_ns()
            self._thread = threading.Thread(target=self._scan_loop, name=f"folder-{self.camera}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop watching and scanning; files still on disk are picked up by the next start."""
        self._halt.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        # watchdog's stop can take ~0.5 s (its inotify buffer delay): let it finish in the background
        threading.Thread(target=self._stop_observer, name=f"unwatch-{self.camera}", daemon=True).start()

    def items(self, stop: threading.Event, timeout: float = 0.5) -> Iterator[SourceItem]:
        """Yield one item per complete file until ``stop`` is set; a file not ``done`` is retried later."""
        self.start()
        handed: str | None = None
        try:
            while not stop.is_set() and not self._halt.is_set():
                self._release(handed)
                handed = None
                try:
                    fid, path = self._queue.get(timeout=timeout)
                except queue.Empty:
                    continue
                item = self._load(fid, path)
                if item is None:  # vanished meanwhile
                    with self._lock:
                        self._claimed.pop(fid, None)
                    continue
                handed = fid
                yield item
        finally:
            self._release(handed)

    def done(self, item: SourceItem, ok: bool) -> None:
        """Apply ``after`` to a scored file (``ok``), or quarantine an unreadable one with a reason file."""
        fid = item.frame.frame_id
        with self._lock:
            path = self._claimed.get(fid)
        if path is None:
            log.warning("camera=%s done() for unknown frame %s", self.camera, fid)
            return
        try:  # the claim is held until the file is moved, so a rescan meanwhile cannot offer it again
            self._finish(fid, path) if ok else self._quarantine(fid, path, item.error or "unreadable")
        finally:
            with self._lock:
                self._claimed.pop(fid, None)

    def _load(self, fid: str, path: Path) -> SourceItem | None:
        started = time.perf_counter()
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as err:
            frame = Frame(self.camera, "folder", fid, datetime.now(UTC), str(path))
            return SourceItem(frame, None, f"{path}: cannot stat ({err.strerror})", "unreadable")
        # ``_offer`` looked up every file older than the agent's start: what it hands out has no verdict yet
        frame = Frame(self.camera, "folder", fid, datetime.fromtimestamp(st.st_mtime, UTC), str(path), is_new=True)
        if stat.S_ISLNK(st.st_mode):
            return SourceItem(frame, None, SYMLINK_REASON, "symlink")
        try:
            image = decode_image(read_regular(path), str(path), self.min_side())
        except OSError as err:
            return SourceItem(frame, None, f"{path}: cannot read ({err.strerror or err})", "unreadable")
        except Exception as err:  # ImageDecodeError, or anything OpenCV throws at hostile bytes
            return SourceItem(frame, None, str(err), "undecodable")
        return SourceItem(frame, image, decode_seconds=time.perf_counter() - started)

    def _release(self, fid: str | None) -> None:
        """A handed-out item that was never ``done`` (scoring failed): hand it out again after a pause."""
        with self._lock:
            if fid is not None and self._claimed.pop(fid, None) is not None:
                self._retry_at[fid] = time.monotonic() + self.retry_seconds
                log.warning("camera=%s frame %s not done, retry in %.0fs", self.camera, fid, self.retry_seconds)

    def _finish(self, fid: str, path: Path) -> None:
        try:
            rel = self._rel(path)  # ValueError when a parent folder was swapped for a link out of the folder
            if self.cfg.after == "move":
                log.debug("camera=%s moved %s to %s", self.camera, fid, move_unique(path, self.done_dir / rel))
            elif self.cfg.after == "delete":
                path.unlink(missing_ok=True)
            else:
                with self._lock:
                    self._processed.add(fid)
        except (OSError, ValueError) as err:
            log.error("camera=%s cannot %s %s: %s (kept, not re-scored)", self.camera, self.cfg.after, path, err)
            with self._lock:
                self._processed.add(fid)

    def _quarantine(self, fid: str, path: Path, reason: str) -> None:
        try:
            dest = move_unique(path, self.quarantine_dir / self._rel(path))
            note = dest.with_name(fit_name(dest.name, ".reason.txt"))
            note.write_text(f"{reason}\n", encoding="utf-8", errors="backslashreplace")
            log.warning("camera=%s quarantined %s: %s", self.camera, fid, reason)
        except (OSError, ValueError) as err:
            log.error("camera=%s cannot quarantine %s: %s", self.camera, path, err)
            with self._lock:
                self._processed.add(fid)

    def _rel(self, path: Path) -> Path:
        return path.parent.resolve().relative_to(self.root) / path.name

    def _hint(self, path: str | None, closed: bool) -> None:
        with self._lock:
            if path is None or len(self._hints) >= self._hint_limit:
                self._full_scan = True
            else:
                self._hints[path] = self._hints.get(path, False) or closed
        self._wake.set()

    def _scan_loop(self) -> None:
        next_full = 0.0
        while not self._halt.is_set():
            self._wake.clear()
            try:
                next_full = self._scan_once(next_full)
            except Exception:  # the scanner must outlive any surprise; files stay on disk
                log.exception("camera=%s folder scan failed", self.camera)
                next_full = 0.0
            wait = max(0.0, next_full - time.monotonic())
            if self._watching:
                wait = min(wait, max(0.02, self.cfg.stable_seconds / 4))
            self._wake.wait(wait)

    def _scan_once(self, next_full: float) -> float:
        if not self.root.is_dir():
            self._stop_observer()
            self._set_state("offline")
            return time.monotonic() + self.cfg.poll_seconds
        self._start_observer()
        self._set_state("online")
        now = time.monotonic()
        with self._lock:
            hints, self._hints = self._hints, {}
            full, self._full_scan = self._full_scan or now >= next_full, False
        if full:
            next_full = now + self.cfg.poll_seconds
            hints = {**dict.fromkeys(self._walk(), False), **hints}
        for path in self._watching:
            hints.setdefault(path, False)
        ready: list[tuple[int, str, Path]] = []
        seen: set[str] = set()
        for raw, closed in hints.items():
            entry = self._check(Path(raw), closed, now, seen)
            if entry is not None:
                ready.append(entry)
        if full:
            with self._lock:
                self._processed &= seen
        for mtime_ns, fid, file in sorted(ready):
            self._offer(fid, file, mtime_ns)
        return next_full

    def _walk(self) -> list[str]:
        try:
            if not self.cfg.recursive:
                with os.scandir(self.root) as entries:
                    return [entry.path for entry in entries]
            found: list[str] = []
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames[:] = [d for d in dirnames if not is_ignored_name(d) and not self._excluded(Path(dirpath, d))]
                found.extend(os.path.join(dirpath, name) for name in filenames)
            return found
        except OSError as err:
            log.warning("camera=%s cannot list %s: %s", self.camera, self.root, err)
            return []

    def _excluded(self, path: Path) -> bool:
        return any(path == d or path.is_relative_to(d) for d in (self.done_dir, self.quarantine_dir))

    def _check(self, path: Path, closed: bool, now: float, seen: set[str]) -> tuple[int, str, Path] | None:
        """Return (mtime_ns, frame_id, path) when the file is complete and new; track it while it changes."""
        key = str(path)
        rel = relative_inside(self.root, path, self.cfg.recursive)
        if rel is None or self._excluded(self.root / rel):
            self._watching.pop(key, None)
            return None
        fid = rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        seen.add(fid)
        with self._lock:
            if fid in self._claimed or fid in self._processed or self._retry_at.get(fid, 0.0) > now:
                self._watching.pop(key, None)
                return None
            self._retry_at.pop(fid, None)
        try:
            st = os.lstat(path)
        except OSError:
            self._watching.pop(key, None)
            return None
        if not stat.S_ISREG(st.st_mode):  # symlinks go out as items to quarantine; FIFOs, dirs etc. are ignored
            self._watching.pop(key, None)
            return (st.st_mtime_ns, fid, path) if stat.S_ISLNK(st.st_mode) else None
        sig = (st.st_size, st.st_mtime_ns, st.st_ino)
        if self._watching.get(key, (None,))[0] != sig:
            self._watching[key] = (sig, now)  # new or still changing: the stability clock restarts
        if now - self._watching[key][1] < self.cfg.stable_seconds and not (closed and st.st_size > 0):
            return None
        del self._watching[key]
        return (st.st_mtime_ns, fid, path)

    def _offer(self, fid: str, path: Path, mtime_ns: int) -> None:
        """Queue a file, waiting while the queue is full (back-pressure, nothing dropped)."""
        if mtime_ns < self._started_ns and self._known(fid):
            self._finish(fid, path)  # scored before a restart, crashed before ``after`` ran
            return
        with self._lock:
            self._claimed[fid] = path
        while not self._halt.is_set():
            try:
                self._queue.put((fid, path), timeout=0.2)
            except queue.Full:
                continue
            self.max_queued = max(self.max_queued, self._queue.qsize())
            return

    def _known(self, fid: str) -> bool:
        if self.is_known is None:
            return False
        try:
            return bool(self.is_known(fid))
        except Exception:
            log.exception("camera=%s is_known(%s) failed; scoring it", self.camera, fid)
            return False

    def _start_observer(self) -> None:
        if not self.watch_events or self._observer is not None:
            return
        try:
            self._observer = Observer()
            self._observer.schedule(_Events(self._hint), str(self.root), recursive=self.cfg.recursive)
            self._observer.start()
        except OSError as err:  # e.g. the inotify watch limit: the rescan still finds everything
            log.warning("camera=%s cannot watch %s (%s); polling only", self.camera, self.root, err)
            self.watch_events, self._observer = False, None

    def _stop_observer(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            try:
                observer.stop()
                observer.join(timeout=2.0)
            except Exception:
                log.debug("camera=%s observer stop failed", self.camera, exc_info=True)

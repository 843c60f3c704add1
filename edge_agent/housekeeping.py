"""Background jobs beside scoring: S3 batches of normal verdicts and the retention pass, on one thread."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class Job:
    """A named function run every ``interval`` seconds (first run one interval after start)."""

    name: str
    interval: float
    run: Callable[[], object]
    due: float = 0.0
    runs: int = 0


class Housekeeper:
    """Runs its jobs on one daemon thread; a failing job is logged and tried again at its next turn."""

    def __init__(self, jobs: list[Job], tick: float = 0.5) -> None:
        self.jobs = {job.name: job for job in jobs}
        self.tick = min([tick, *(job.interval / 2 for job in jobs)])
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one job at a time, also for run_now() from another thread

    def start(self) -> None:
        """Start the thread; every job first runs one interval from now."""
        now = time.monotonic()
        for job in self.jobs.values():
            job.due = now + job.interval
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="housekeeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the job in hand."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None

    def run_now(self, name: str) -> None:
        """Run one job at once on the caller's thread (at shutdown, and in tests)."""
        self._run(self.jobs[name])

    def _loop(self) -> None:
        while not self._stop.wait(self.tick):
            for job in self.jobs.values():
                if self._stop.is_set():
                    return
                if time.monotonic() >= job.due:
                    self._run(job)
                    job.due = time.monotonic() + job.interval

    def _run(self, job: Job) -> None:
        with self._lock:
            try:
                job.run()
            except Exception:  # the next turn tries again; scoring is never affected
                log.exception("housekeeping job %s failed", job.name)
            finally:
                job.runs += 1

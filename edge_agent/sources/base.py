"""The source interface: yields frames with their decoded image (or why it could not be decoded)."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from edge_agent.records import Frame

log = logging.getLogger(__name__)

#: "ended" only for a video file that reached its end without ``loop``.
SourceState = Literal["online", "offline", "stalled", "ended"]


@dataclass(frozen=True)
class SourceItem:
    """One frame from a source: ``image`` is RGB uint8 when decoded, else ``error`` says why not.

    ``reason`` is the error's kind for metrics (``undecodable``, ``unreadable``, ``symlink``); ``decode_seconds``
    the time spent reading and decoding.
    """

    frame: Frame
    image: np.ndarray | None
    error: str | None = None
    reason: str | None = None
    decode_seconds: float = 0.0


class Source(ABC):
    """A camera's frame source: ``start``, ``items`` until stopped, ``done`` per item, ``stop``."""

    def __init__(self, camera: str) -> None:
        self.camera = camera
        self._state: SourceState = "offline"
        self._state_lock = threading.Lock()
        self._callbacks: list[Callable[[SourceState], None]] = []

    @property
    def state(self) -> SourceState:
        """Current state: "online", "offline", "stalled" or "ended"."""
        return self._state

    def on_state(self, callback: Callable[[SourceState], None]) -> None:
        """Call ``callback(state)`` on every state change (from the source's threads; must not block)."""
        self._callbacks.append(callback)

    @abstractmethod
    def start(self) -> None:
        """Start background work (watchers, reader threads). Idempotent."""

    @abstractmethod
    def stop(self) -> None:
        """Stop background work; ``items`` returns soon after. Idempotent."""

    @abstractmethod
    def items(self, stop: threading.Event, timeout: float = 0.5) -> Iterator[SourceItem]:
        """Yield items until ``stop`` is set (or the source ends); wait at most ``timeout`` between checks.

        Never raises on bad input: undecodable inputs come as items with ``error`` set.
        """

    @abstractmethod
    def done(self, item: SourceItem, ok: bool) -> None:
        """The pipeline stored the verdict of ``item`` (``ok``) or gave up on it as unreadable (not ``ok``)."""

    def _set_state(self, state: SourceState) -> None:
        """Change state and tell the callbacks; a failing callback is logged, never raised."""
        with self._state_lock:
            if state == self._state:
                return
            self._state = state
        log.debug("camera=%s source state %s", self.camera, state)
        for callback in list(self._callbacks):
            try:
                callback(state)
            except Exception:
                log.exception("camera=%s state callback failed", self.camera)

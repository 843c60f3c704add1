"""Delivery worker: one daemon thread per enabled channel drains the outbox in id order.

On the first failure in a channel the row is scheduled for a retry with exponential back-off and the batch
stops, so later rows never overtake it. Scoring never waits on this: ``wake()`` only sets an event.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import timedelta

from edge_agent.backoff import backoff_delay
from edge_agent.config import DeliveryConfig
from edge_agent.delivery import Channel, Delivery, DeliveryResult, retry
from edge_agent.store import OutboxItem, Store

log = logging.getLogger(__name__)


class DeliveryWorker:
    """Delivers outbox rows to MQTT and S3 on background threads; ``start()``, ``wake()``, ``stop()``."""

    def __init__(self, store: Store, channels: Sequence[Channel], cfg: DeliveryConfig, interval: float = 1.0) -> None:
        self.store, self.cfg = store, cfg
        self._channels = {channel.name: channel for channel in channels}
        self.interval = interval
        self._stop = threading.Event()
        self._flush_deadline = 0.0
        self._wakes = {name: threading.Event() for name in self._channels}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._counters = {ch: {"delivered": 0, "failed": 0, "dead": 0} for ch in self._wakes}

    @property
    def channels(self) -> list[str]:
        """The enabled channels (one thread each)."""
        return list(self._wakes)

    def counters(self) -> dict[str, dict[str, int]]:
        """Delivered / failed / dead counts per channel since start."""
        with self._lock:
            return {ch: dict(c) for ch, c in self._counters.items()}

    def start(self) -> None:
        """Start one daemon thread per enabled channel."""
        self._stop.clear()
        for channel in self._wakes:
            thread = threading.Thread(target=self._run, args=(channel,), name=f"delivery-{channel}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("delivery started for %s", ", ".join(self._wakes) or "no channel")

    def wake(self) -> None:
        """Deliver promptly (after a new verdict); never blocks."""
        for event in self._wakes.values():
            event.set()

    def stop(self, flush_seconds: float = 5.0) -> None:
        """Deliver what can be delivered within ``flush_seconds``, then stop and join the threads."""
        self._flush_deadline = time.monotonic() + max(0.0, flush_seconds)
        self._stop.set()
        self.wake()
        join_by = self._flush_deadline + 10.0  # a last publish or upload may still be in flight
        for thread in self._threads:
            thread.join(max(0.1, join_by - time.monotonic()))
            if thread.is_alive():
                log.warning("delivery thread %s did not stop in time", thread.name)
        self._threads.clear()
        log.info("delivery stopped; pending rows: %s", self._safe_depths())

    def _run(self, channel: str) -> None:
        wake = self._wakes[channel]
        while not self._stop.is_set():
            self._drain_safely(channel, flushing=False)
            wake.wait(self.interval)
            wake.clear()
        if time.monotonic() < self._flush_deadline:
            self._drain_safely(channel, flushing=True)

    def _drain_safely(self, channel: str, flushing: bool) -> None:
        try:
            self._drain(channel, flushing)
        except Exception:  # a store hiccup (locked, disk full) must not kill the thread
            log.exception("delivery on %s failed; retrying in %.1f s", channel, self.interval)

    def _drain(self, channel: str, flushing: bool) -> None:
        """Deliver batches until the channel is empty, a row fails, or it is time to stop."""
        while True:
            items = self.store.pending(channel, self.cfg.batch_size)
            for item in items:
                if self._should_stop(flushing):
                    return
                if not self._handle(item, self._deliver(item)):
                    return
            if len(items) < self.cfg.batch_size:
                return

    def _should_stop(self, flushing: bool) -> bool:
        if flushing:
            return time.monotonic() >= self._flush_deadline
        return self._stop.is_set()

    def _handle(self, item: OutboxItem, outcome: Delivery) -> bool:
        """Record the outcome; False when the batch must stop (a retry keeps the channel's order)."""
        result, reason = outcome.result, outcome.reason
        if result is DeliveryResult.DELIVERED:
            self.store.mark_delivered(item.id)
            self._count(item.channel, "delivered")
            return True
        if result is DeliveryResult.DEAD:
            self.store.mark_dead(item.id, reason)
            self._count(item.channel, "dead")
            return True
        delay = backoff_delay(item.attempts, self.cfg.retry_min_seconds, self.cfg.retry_max_seconds)
        self.store.mark_failed(item.id, reason, self.store.now() + timedelta(seconds=delay))
        self._count(item.channel, "failed")
        log.info(
            "%s row %d not delivered (attempt %d): %s; retry in %.1f s",
            item.channel,
            item.id,
            item.attempts + 1,
            reason,
            delay,
        )
        return False

    def _deliver(self, item: OutboxItem) -> Delivery:
        """Hand one row to its channel."""
        channel = self._channels.get(item.channel)
        if channel is None:
            return retry(f"channel {item.channel} is not enabled")
        return channel.deliver(item)

    def _count(self, channel: str, what: str) -> None:
        with self._lock:
            self._counters[channel][what] += 1

    def _safe_depths(self) -> dict[str, int] | str:
        try:
            return self.store.queue_depths()
        except Exception as err:  # only for a log line
            return f"unknown ({err})"

"""Metrics read when Prometheus scrapes: outbox depth and age, cameras, the sources' dropped frames, MQTT."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from edge_agent.sources.stream import StreamSource

if TYPE_CHECKING:
    from edge_agent.agent import Agent


def collect_state(agent: Agent) -> list[Metric]:
    """Scrape-time metrics: outbox depth and age, cameras, the sources' dropped frames, MQTT connection."""
    now = time.monotonic()
    depth = GaugeMetricFamily("linewatch_outbox_depth", "Outbox rows waiting, per channel.", labels=["channel"])
    age = GaugeMetricFamily(
        "linewatch_outbox_oldest_seconds", "Age of the oldest waiting outbox row, per channel.", labels=["channel"]
    )
    for channel, (n, oldest) in agent.store.queue_stats().items():
        depth.add_metric([channel], n)
        age.add_metric([channel], oldest)
    up = GaugeMetricFamily("linewatch_camera_up", "1 while the camera's source is online.", labels=["camera"])
    busy = GaugeMetricFamily(
        "linewatch_camera_frame_seconds", "How long the frame in hand has been scored.", labels=["camera"]
    )
    since = GaugeMetricFamily(
        "linewatch_camera_seconds_since_frame", "Seconds since the source last gave a frame.", labels=["camera"]
    )
    dropped = CounterMetricFamily(
        "linewatch_dropped_frames", "Frames a source dropped, by reason.", labels=["camera", "reason"]
    )
    for c in agent.cameras:
        up.add_metric([c.cfg.id], 1.0 if c.source.state == "online" else 0.0)
        busy.add_metric([c.cfg.id], c.frame_seconds(now))
        since.add_metric([c.cfg.id], now - c.last_item)
        if isinstance(c.source, StreamSource):
            dropped.add_metric([c.cfg.id, "overwritten"], c.source.dropped_frames)
            dropped.add_metric([c.cfg.id, "bad_frame"], c.source.garbage_frames)
    out: list[Metric] = [depth, age, up, busy, since, dropped]
    if agent.mqtt is not None:
        out.append(
            GaugeMetricFamily("linewatch_mqtt_connected", "1 while connected.", value=float(agent.mqtt.connected))
        )
    return out

"""The agent: wires config -> store, delivery, metrics, cameras; one stop event; start in order, stop in reverse."""

from __future__ import annotations

import functools
import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent import systemd_notify
from edge_agent.bundle import load_bundle
from edge_agent.config import AgentConfig, CameraConfig, FolderSourceConfig
from edge_agent.delivery.mqtt import MQTTPublisher
from edge_agent.delivery.s3 import S3Mirror
from edge_agent.delivery.worker import DeliveryWorker
from edge_agent.inspector import Inspector
from edge_agent.metrics import MetricsServer, Registry
from edge_agent.pipeline import CameraPipeline, Outputs
from edge_agent.records import VerdictRecord
from edge_agent.sources.base import Source, SourceItem
from edge_agent.sources.folder import FolderSource
from edge_agent.sources.stream import StreamSource
from edge_agent.store import Store

log = logging.getLogger(__name__)


@dataclass
class Camera:
    """A running camera: its config, source, and one pipeline (own interpreters) per scoring thread."""

    cfg: CameraConfig
    source: Source
    pipelines: list[CameraPipeline]
    threads: list[threading.Thread] = field(default_factory=list)
    last_frame: float = field(default_factory=time.monotonic)

    @property
    def pipeline(self) -> CameraPipeline:
        """The first scoring pipeline (replay and tools use this one)."""
        return self.pipelines[0]


class Agent:
    """Everything the edge agent runs, built from one validated config."""

    def __init__(self, cfg: AgentConfig, on_verdict: Callable[[VerdictRecord], None] | None = None) -> None:
        self.cfg = cfg
        self.stop_event = threading.Event()
        self.on_verdict = on_verdict
        self.registry = Registry()
        # what can be refused (TLS files, credentials, bundles) is checked before anything is created or connected
        name = cfg.agent.name
        self.mqtt = MQTTPublisher(cfg.mqtt, name) if cfg.mqtt.enabled else None  # connects in start()
        self.s3 = S3Mirror(cfg.s3, name) if cfg.s3.enabled else None
        bundles = [load_bundle(c.bundle) for c in cfg.cameras]  # read and hash-checked once per camera
        inspectors = [
            [Inspector(bundle, threads=cfg.agent.threads) for _ in range(c.workers)]
            for c, bundle in zip(cfg.cameras, bundles, strict=True)
        ]
        self.store = Store(cfg.database.url, cfg.database.busy_timeout_ms)
        channels = [c for c in (self.mqtt, self.s3) if c is not None]
        self.delivery = DeliveryWorker(self.store, channels, cfg.delivery)
        self.outputs = Outputs(
            name,
            self.mqtt.alert_topic if self.mqtt else None,
            self.s3.key_for if self.s3 else None,
            cfg.s3.upload_images,
            cfg.mqtt.qos,
        )
        self.cameras = [self._camera(c, i) for c, i in zip(cfg.cameras, inspectors, strict=True)]
        self.metrics_server = (
            MetricsServer(self.registry, cfg.metrics.host, cfg.metrics.port, self.health)
            if cfg.metrics.enabled
            else None
        )
        self._last_stats = time.monotonic()

    def _camera(self, cam: CameraConfig, inspectors: list[Inspector]) -> Camera:
        pipelines = [
            CameraPipeline(
                cam, i, self.store, self.outputs, self.cfg.agent.data_dir, self._verdict, self.cfg.agent.min_free_mb
            )
            for i in inspectors
        ]
        source: Source
        if isinstance(cam.source, FolderSourceConfig):
            source = FolderSource(cam.id, cam.source, is_known=functools.partial(self.store.has_verdict, cam.id))
        else:
            source = StreamSource(cam.id, cam.source)
        source.on_state(functools.partial(self._camera_state, cam.id))
        return Camera(cam, source, pipelines)

    def _verdict(self, verdict: VerdictRecord) -> None:
        self.registry.frames.inc(camera=verdict.camera)
        self.registry.latency.observe(verdict.latency_ms, camera=verdict.camera)
        if verdict.anomalous:
            self.registry.anomalies.inc(camera=verdict.camera)
        self.delivery.wake()
        if self.on_verdict is not None:
            self.on_verdict(verdict)

    def _camera_state(self, camera: str, state: str) -> None:
        log.info("camera=%s state=%s", camera, state)
        self.registry.camera_up.set(1.0 if state == "online" else 0.0, camera=camera)
        if self.mqtt is not None:
            self.mqtt.set_camera_status(camera, state)

    def _run_camera(self, camera: Camera, pipeline: CameraPipeline) -> None:
        """One scoring thread of a camera: score items until stopped; never dies on one bad frame.

        With several threads each runs its own ``items()`` loop on the shared source (the folder source's queue
        and the stream's buffer hand each item to one of them).
        """
        for item in camera.source.items(self.stop_event, timeout=0.5):
            camera.last_frame = time.monotonic()
            self._handle(camera, pipeline, item)

    def _handle(self, camera: Camera, pipeline: CameraPipeline, item: SourceItem) -> None:
        frame = item.frame
        if item.image is None:
            log.warning("camera=%s frame=%s quarantined: %s", frame.camera, frame.frame_id, item.error)
            self.registry.quarantined.inc(camera=frame.camera)
            camera.source.done(item, ok=False)
            return
        try:
            pipeline.process(frame, item.image)
        except Exception:  # one frame must never stop the line; the file stays for a retry
            log.exception("camera=%s frame=%s scoring failed", frame.camera, frame.frame_id)
            return
        camera.source.done(item, ok=True)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy when every camera thread is alive; details for /healthz."""
        threads = {c.cfg.id: bool(c.threads) and all(t.is_alive() for t in c.threads) for c in self.cameras}
        depths = self.store.queue_depths()
        for channel, depth in depths.items():
            self.registry.queue_depth.set(depth, channel=channel)
        if self.mqtt is not None:
            self.registry.mqtt_connected.set(1.0 if self.mqtt.connected else 0.0)
        return all(threads.values()), {"cameras": threads, "queues": depths}

    def start(self) -> None:
        """Start in order: store is ready, delivery, metrics, then the cameras."""
        self.cfg.agent.data_dir.mkdir(parents=True, exist_ok=True)
        self.delivery.start()
        if self.metrics_server is not None:
            self.metrics_server.start()
        for camera in self.cameras:
            camera.source.start()
            for n, pipeline in enumerate(camera.pipelines):
                name = f"cam-{camera.cfg.id}-{n}"
                camera.threads.append(threading.Thread(target=self._run_camera, args=(camera, pipeline), name=name))
                camera.threads[-1].start()
        systemd_notify.ready()
        log.info("agent %s started with %d camera(s)", self.cfg.agent.name, len(self.cameras))

    def run_forever(self) -> None:
        """Block until SIGTERM/SIGINT; ping the systemd watchdog while healthy; publish stats."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())
        pinger = systemd_notify.Watchdog()
        while not self.stop_event.wait(1.0):
            healthy, _ = self.health()
            pinger.maybe_ping(healthy)
            self._maybe_publish_stats()

    def _maybe_publish_stats(self) -> None:
        if self.mqtt is None or time.monotonic() - self._last_stats < self.cfg.mqtt.stats_interval_seconds:
            return
        self._last_stats = time.monotonic()
        self.mqtt.publish_stats({"counts": self.store.counts(None), "queues": self.store.queue_depths()})

    def stop(self, flush_seconds: float = 10.0) -> None:
        """Stop in reverse: cameras finish the frame in hand, delivery flushes, then MQTT says 'stopped'."""
        systemd_notify.stopping()
        self.stop_event.set()
        for camera in reversed(self.cameras):
            camera.source.stop()
            for thread in camera.threads:
                thread.join(timeout=30)
        if self.metrics_server is not None:
            self.metrics_server.stop()
        self.delivery.stop(flush_seconds)
        if self.mqtt is not None:
            self.mqtt.close()
        self.store.close()
        log.info("agent %s stopped", self.cfg.agent.name)


def verdict_line(verdict: VerdictRecord) -> str:
    """One greppable line per verdict."""
    kind = f" type={verdict.defect_type} conf={verdict.type_confidence:.2f}" if verdict.defect_type else ""
    flag = "ANOMALY" if verdict.anomalous else "ok"
    return (
        f"verdict camera={verdict.camera} frame={verdict.frame_id} {flag} score={verdict.score:.3f} "
        f"norm={verdict.normalised_score:.2f} thr={verdict.threshold:.3f}{kind} latency_ms={verdict.latency_ms:.1f}"
        + (f" heatmap={Path(verdict.heatmap_path).name}" if verdict.heatmap_path else "")
    )


def summary(store: Store) -> str:
    """JSON summary of the store's counts and queues."""
    return json.dumps({"counts": store.counts(None), "queues": store.queue_depths()}, indent=2, default=str)

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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge_agent import systemd_notify
from edge_agent.bundle import load_bundle
from edge_agent.config import AgentConfig, CameraConfig, FolderSourceConfig
from edge_agent.delivery.mqtt import MQTTPublisher
from edge_agent.delivery.s3 import S3Mirror, s3_client
from edge_agent.delivery.worker import DeliveryWorker
from edge_agent.fleet import S3BundleFetcher
from edge_agent.housekeeping import Housekeeper, Job
from edge_agent.inspector import Inspector
from edge_agent.metrics import MetricsServer, Registry
from edge_agent.pipeline import ActiveModel, CameraPipeline, Outputs
from edge_agent.records import VerdictRecord
from edge_agent.retention import Retention, RetentionReport
from edge_agent.rollout import BundleWatcher
from edge_agent.sources.base import Source, SourceItem
from edge_agent.sources.folder import FolderSource
from edge_agent.sources.stream import StreamSource
from edge_agent.state_metrics import collect_state
from edge_agent.store import Store

log = logging.getLogger(__name__)


@dataclass
class Camera:
    """A running camera: its config, source, and one pipeline (own interpreters) per scoring thread.

    ``busy_since`` holds, per scoring thread, when its frame in hand started (absent when idle); ``last_item``
    when the source last handed out a frame. ``health()`` reads both to see a hung call or a silent stream.
    """

    cfg: CameraConfig
    source: Source
    pipelines: list[CameraPipeline]
    threads: list[threading.Thread] = field(default_factory=list)
    busy_since: dict[int, float] = field(default_factory=dict)
    last_item: float = field(default_factory=time.monotonic)

    @property
    def pipeline(self) -> CameraPipeline:
        """The first scoring pipeline (replay and tools use this one)."""
        return self.pipelines[0]

    def frame_seconds(self, now: float) -> float:
        """How long the oldest frame in hand has been scored (0 when idle)."""
        return max((now - t for t in list(self.busy_since.values())), default=0.0)


class Agent:
    """Everything the edge agent runs, built from one validated config.

    ``clock`` (UTC ``datetime``) dates verdicts, outbox rows and retention; tests inject one to run a month.
    """

    def __init__(
        self,
        cfg: AgentConfig,
        on_verdict: Callable[[VerdictRecord], None] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
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
        self.store = Store(cfg.database.url, cfg.database.busy_timeout_ms, clock=clock)
        self.store.adopt(name)
        channels = [c for c in (self.mqtt, self.s3) if c is not None]
        self.delivery = DeliveryWorker(self.store, channels, cfg.delivery)
        batching = self.s3 is not None and cfg.s3.normal_verdicts == "batch"
        self.outputs = Outputs(
            name,
            self.mqtt.alert_topic if self.mqtt else None,
            self.s3.key_for if self.s3 else None,
            cfg.s3.upload_images,
            cfg.mqtt.qos,
            batch_key=self.s3.batch_key if self.s3 is not None and batching else None,
        )
        self.cameras = [self._camera(c, i) for c, i in zip(cfg.cameras, inspectors, strict=True)]
        self.rollout = BundleWatcher([(c.cfg, c.pipelines) for c in self.cameras], cfg.agent.threads, self._swapped)
        self.fetchers = [
            S3BundleFetcher(self.s3.client if self.s3 else s3_client(cfg.s3)[0], cfg.s3.bucket, prefix, c.bundle, c.id)
            for c in cfg.cameras
            if (prefix := c.bundle_s3_prefix) is not None
        ]
        for camera in self.cameras:
            self._announce_model(camera.cfg.id, camera.pipeline.active)
        self.registry.add_collector(functools.partial(collect_state, self))
        self.retention = Retention(cfg.retention, self.store, self._evidence_roots(), keep_unbatched=batching)
        jobs = [Job("batches", cfg.s3.batch_seconds, self.batch_normals)] if batching else []
        if cfg.retention.enabled:
            jobs.append(Job("retention", cfg.retention.interval_seconds, self.apply_retention))
        if cfg.agent.bundle_poll_seconds is not None:
            jobs.append(Job("bundles", cfg.agent.bundle_poll_seconds, self.check_bundles))
        self.housekeeper = Housekeeper(jobs)
        self.metrics_server = (
            MetricsServer(self.registry, cfg.metrics.host, cfg.metrics.port, self.health)
            if cfg.metrics.enabled
            else None
        )
        self._last_stats = time.monotonic()
        self._healthy = True

    def _camera(self, cam: CameraConfig, inspectors: list[Inspector]) -> Camera:
        pipelines = [
            CameraPipeline(
                cam,
                i,
                self.store,
                self.outputs,
                self.cfg.agent.data_dir,
                self._verdict,
                self.cfg.agent.min_free_mb,
                clock=self.store.now,
                on_stage=self._stage_observer(cam.id),
                on_outbox=self.delivery.wake,
            )
            for i in inspectors
        ]
        source: Source
        if isinstance(cam.source, FolderSourceConfig):
            source = FolderSource(
                cam.id,
                cam.source,
                is_known=functools.partial(self.store.has_verdict, cam.id),
                min_side=lambda: max(p.inspector.input_side for p in pipelines),
            )
        else:
            source = StreamSource(cam.id, cam.source)
        source.on_state(functools.partial(self._camera_state, cam.id))
        return Camera(cam, source, pipelines)

    def _stage_observer(self, camera: str) -> Callable[[str, float], None]:
        def observe(stage: str, seconds: float) -> None:
            self.registry.stage.labels(camera=camera, stage=stage).observe(seconds)

        return observe

    def _evidence_roots(self) -> list[Path]:
        """Folders retention manages: heatmaps, image copies and the done/ folders of moving folder cameras."""
        data = self.cfg.agent.data_dir.resolve()
        roots = [data / "heatmaps", data / "images"]
        roots += [
            c.source.done_dir
            for c in self.cameras
            if isinstance(c.source, FolderSource) and c.source.cfg.after == "move"
        ]
        return roots

    def _announce_model(self, camera: str, model: ActiveModel, previous: ActiveModel | None = None) -> None:
        """The model a camera runs: an info metric and a retained MQTT message."""
        self.registry.model.labels(camera=camera).info(
            {"model": model.name, "version": model.version, "hash": model.digest}
        )
        if self.mqtt is not None:
            message: dict[str, Any] = {"camera": camera, "name": model.name, "version": model.version}
            message.update(hash=model.digest, since=datetime.now(UTC).isoformat())
            if previous is not None:
                message["previous"] = {"version": previous.version, "hash": previous.digest}
            self.mqtt.set_camera_model(camera, message)

    def check_bundles(self) -> int:
        """Fetch versions published to S3 (fleet), then swap in any new bundle behind the cameras' links."""
        for fetcher in self.fetchers:
            fetcher.check()
        return self.rollout.check()

    def _swapped(self, camera: CameraConfig, old: ActiveModel, new: ActiveModel) -> None:
        self._announce_model(camera.id, new, old)

    def _verdict(self, verdict: VerdictRecord) -> None:
        self.registry.frames.labels(camera=verdict.camera).inc()
        self.registry.latency.labels(camera=verdict.camera).observe(verdict.latency_ms / 1000.0)
        if verdict.anomalous:
            self.registry.anomalies.labels(camera=verdict.camera).inc()
        if self.on_verdict is not None:
            self.on_verdict(verdict)

    def _camera_state(self, camera: str, state: str) -> None:
        log.info("camera=%s state=%s", camera, state)
        if self.mqtt is not None:
            self.mqtt.set_camera_status(camera, state)

    def _run_camera(self, camera: Camera, index: int) -> None:
        """One scoring thread of a camera: score items until stopped; never dies on one bad frame.

        With several threads each runs its own ``items()`` loop on the shared source (the folder source's queue
        and the stream's buffer hand each item to one of them).
        """
        pipeline = camera.pipelines[index]
        for item in camera.source.items(self.stop_event, timeout=0.5):
            camera.last_item = camera.busy_since[index] = time.monotonic()
            try:
                self._handle(camera, pipeline, item)
            finally:
                camera.busy_since.pop(index, None)

    def _handle(self, camera: Camera, pipeline: CameraPipeline, item: SourceItem) -> None:
        frame = item.frame
        if item.image is None:
            log.warning("camera=%s frame=%s quarantined: %s", frame.camera, frame.frame_id, item.error)
            self.registry.quarantined.labels(camera=frame.camera, reason=item.reason or "unreadable").inc()
            camera.source.done(item, ok=False)
            return
        if item.decode_seconds:
            self.registry.stage.labels(camera=frame.camera, stage="decode").observe(item.decode_seconds)
        try:
            pipeline.process(frame, item.image)
        except Exception:  # one frame must never stop the line; the file stays for a retry
            log.exception("camera=%s frame=%s scoring failed", frame.camera, frame.frame_id)
            return
        camera.source.done(item, ok=True)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy when every camera thread is alive, no frame is stuck and no stream camera is silent.

        A folder camera without new files is idle, not unhealthy; a video file that ended is done.
        """
        now, agent = time.monotonic(), self.cfg.agent
        cameras: dict[str, dict[str, Any]] = {}
        for c in self.cameras:
            alive = bool(c.threads) and all(t.is_alive() for t in c.threads)
            in_hand = c.frame_seconds(now)
            silent = now - c.last_item
            watch_silence = isinstance(c.source, StreamSource) and c.source.state != "ended"
            problems = [] if alive else ["scoring thread not running"]
            if in_hand > agent.frame_timeout_seconds:
                problems.append(f"frame in hand for {in_hand:.1f} s (limit {agent.frame_timeout_seconds:g} s)")
            if watch_silence and silent > agent.stream_silence_seconds:
                problems.append(f"no frame for {silent:.1f} s (limit {agent.stream_silence_seconds:g} s)")
            cameras[c.cfg.id] = {
                "healthy": not problems,
                "state": c.source.state,
                "frame_seconds": round(in_hand, 3),
                "seconds_since_frame": round(silent, 3),
                "problems": problems,
            }
        healthy = all(c["healthy"] for c in cameras.values())
        return healthy, {"cameras": cameras, "queues": self.store.queue_depths()}

    def batch_normals(self) -> int:
        """Put every unbatched normal verdict into S3 batches (one per camera per call, split at 10,000)."""
        total = 0
        for camera in self.cameras:
            while (n := self.store.batch_normals(camera.cfg.id, self.outputs.render_batch, 10_000)) > 0:
                self.registry.batches.labels(camera=camera.cfg.id).inc()
                total += n
                if n < 10_000:
                    break
        if total:
            self.delivery.wake()
        return total

    def apply_retention(self) -> RetentionReport:
        """One retention pass, counted in the metrics."""
        report = self.retention.run_once()
        reg = self.registry
        for kind, n in (
            ("files", report.files_deleted),
            ("verdicts", report.verdicts_deleted),
            ("outbox", report.outbox_deleted),
        ):
            reg.retention_deleted.labels(kind=kind).inc(n)
        reg.retention_freed.inc(report.bytes_freed)
        reg.retention_seconds.observe(report.seconds)
        reg.evidence_bytes.labels(files="all").set(report.files_bytes)
        reg.evidence_bytes.labels(files="protected").set(report.protected_bytes)
        return report

    def start(self) -> None:
        """Start in order: store is ready, delivery, housekeeping, metrics, then the cameras."""
        self.cfg.agent.data_dir.mkdir(parents=True, exist_ok=True)
        self.delivery.start()
        self.housekeeper.start()
        if self.metrics_server is not None:
            self.metrics_server.start()
        for camera in self.cameras:
            camera.source.start()
            camera.last_item = time.monotonic()
            for n in range(len(camera.pipelines)):
                name = f"cam-{camera.cfg.id}-{n}"
                camera.threads.append(threading.Thread(target=self._run_camera, args=(camera, n), name=name))
                camera.threads[-1].start()
        systemd_notify.ready()
        log.info("agent %s started with %d camera(s)", self.cfg.agent.name, len(self.cameras))

    def run_forever(self) -> None:
        """Block until SIGTERM/SIGINT; ping the systemd watchdog while healthy; publish stats."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())
        pinger = systemd_notify.Watchdog()
        while not self.stop_event.wait(1.0):
            self.tick(pinger)

    def tick(self, pinger: systemd_notify.Watchdog) -> bool:
        """One turn of the main loop: health, watchdog ping (only while healthy), stats; returns the health."""
        healthy, details = self.health()
        if not healthy and self._healthy:  # logged when it turns, not on every tick
            problems = {cam: d["problems"] for cam, d in details["cameras"].items() if d["problems"]}
            log.error("agent unhealthy: %s", problems)
        self._healthy = healthy
        pinger.maybe_ping(healthy)
        self._maybe_publish_stats()
        return healthy

    def _maybe_publish_stats(self) -> None:
        if self.mqtt is None or time.monotonic() - self._last_stats < self.cfg.mqtt.stats_interval_seconds:
            return
        self._last_stats = time.monotonic()
        self.mqtt.publish_stats({"counts": self.store.counts(None), "queues": self.store.queue_depths()})

    def stop(self, flush_seconds: float = 10.0) -> None:
        """Stop in reverse: cameras finish the frame in hand, the last batch, delivery flushes, MQTT 'stopped'."""
        systemd_notify.stopping()
        self.stop_event.set()
        for camera in reversed(self.cameras):
            camera.source.stop()
            for thread in camera.threads:
                thread.join(timeout=30)
        if self.metrics_server is not None:
            self.metrics_server.stop()
        self.housekeeper.stop()
        if "batches" in self.housekeeper.jobs:
            self.housekeeper.run_now("batches")
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

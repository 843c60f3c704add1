"""The agent's Prometheus metrics (``prometheus_client``) and the ``/metrics`` + ``/healthz`` HTTP endpoint.

Events (frames, anomalies, quarantined frames, stage times, retention) are counted where they happen; state
(outbox depth and age, cameras, dropped frames of the sources) is read by a collector when Prometheus scrapes.

Example:
    >>> reg = Registry(build_version="1.0")
    >>> reg.frames.labels(camera="top").inc()
    >>> b'linewatch_frames_total{camera="top"} 1.0' in reg.render()
    True
"""

from __future__ import annotations

import json
import logging
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)
disable_created_metrics()  # type: ignore[no-untyped-call]  # no ``*_created`` series: they double the exposition and no dashboard reads them

CONTENT_TYPE = CONTENT_TYPE_LATEST
#: Seconds; frames of a few ms (int8 on a desktop core) to a second (a large model on a small board).
LATENCY_BUCKETS = (0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5)
STAGES = ("decode", "score", "evidence", "store")

HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]


def _package_version() -> str:
    try:
        return version("linewatch")
    except PackageNotFoundError:
        return "unknown"


class _ScrapeCollector(Collector):
    """Runs ``read()`` at scrape time; a failure is logged and leaves those metrics out of this scrape."""

    def __init__(self, read: Callable[[], Iterable[Metric]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        """The metric families ``read`` gives now."""
        try:
            return list(self._read())
        except Exception:
            log.exception("metrics collector failed")
            return []

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: names are checked when scraped."""
        return []


class Registry:
    """Every linewatch metric, on a registry of its own (no process-global state)."""

    def __init__(self, build_version: str | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg, cam = self.registry, ["camera"]
        self.frames = Counter("linewatch_frames", "Frames scored.", cam, registry=reg)
        self.anomalies = Counter("linewatch_anomalies", "Frames judged anomalous.", cam, registry=reg)
        self.quarantined = Counter(
            "linewatch_quarantined_frames", "Unreadable frames set aside, by reason.", [*cam, "reason"], registry=reg
        )
        self.latency = Histogram(
            "linewatch_frame_latency_seconds", "Model time per frame.", cam, buckets=LATENCY_BUCKETS, registry=reg
        )
        self.stage = Histogram(
            "linewatch_stage_seconds",
            "Time per pipeline stage (decode, score, evidence, store).",
            [*cam, "stage"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.batches = Counter("linewatch_s3_batches", "Batches of normal verdicts queued for S3.", cam, registry=reg)
        self.retention_deleted = Counter(
            "linewatch_retention_deleted", "Deleted by retention (files, verdicts, outbox).", ["kind"], registry=reg
        )
        self.retention_freed = Counter(
            "linewatch_retention_freed_bytes", "Bytes of evidence files deleted by retention.", registry=reg
        )
        self.retention_seconds = Histogram(
            "linewatch_retention_pass_seconds",
            "Duration of a retention pass.",
            buckets=(0.01, 0.1, 0.5, 1, 5, 30, 120),
            registry=reg,
        )
        self.evidence_bytes = Gauge(
            "linewatch_evidence_bytes",
            "Evidence files on disk after the last retention pass (all, protected: undelivered or reviewed).",
            ["files"],
            registry=reg,
        )
        self.model = Info("linewatch_model", "The model bundle each camera runs.", cam, registry=reg)
        self.build = Info("linewatch_build", "Build information.", registry=reg)
        self.build.info({"version": build_version or _package_version()})

    def add_collector(self, read: Callable[[], Iterable[Metric]]) -> None:
        """Register metrics computed at scrape time by ``read()``."""
        self.registry.register(_ScrapeCollector(read))

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)


class _Handler(BaseHTTPRequestHandler):
    """GET /metrics, GET /healthz, 404 elsewhere; access log at DEBUG through logging."""

    server: _Server

    def do_GET(self) -> None:
        """Serve one GET request."""
        path = urlsplit(self.path).path
        if path == "/metrics":
            self._send(200, CONTENT_TYPE, self.server.registry.render())
        elif path == "/healthz":
            code, body = self.server.health_response()
            self._send(code, "application/json", body)
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            log.debug("client %s went away", self.address_string())

    def log_message(self, fmt: str, *args: Any) -> None:
        """Access and error lines go to logging at DEBUG instead of stderr."""
        log.debug("%s " + fmt, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], registry: Registry, health: HealthCheck | None) -> None:
        self.registry = registry
        self.health = health
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the host name."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def health_response(self) -> tuple[int, bytes]:
        details: dict[str, Any]
        if self.health is None:
            ok, details = True, {}
        else:
            try:
                ok, details = self.health()
            except Exception as err:  # a broken check is an unhealthy agent, not a crashed endpoint
                log.exception("health check failed")
                ok, details = False, {"error": f"{type(err).__name__}: {err}"}
        body = {"healthy": bool(ok), **{k: v for k, v in details.items() if k != "healthy"}}
        return (200 if ok else 503), (json.dumps(body, default=str) + "\n").encode("utf-8")


class MetricsServer:
    """``/metrics`` and ``/healthz`` over HTTP from a daemon thread; port 0 picks a free port."""

    def __init__(
        self, registry: Registry, host: str = "127.0.0.1", port: int = 9108, health: HealthCheck | None = None
    ) -> None:
        self.registry = registry
        self.host = host
        self._port = port
        self.health = health
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port once started (the configured one before)."""
        return self._server.server_address[1] if self._server is not None else self._port

    def start(self) -> None:
        """Bind and serve in a daemon thread."""
        if self._server is not None:
            msg = "metrics server already started"
            raise RuntimeError(msg)
        self._server = _Server((self.host, self._port), self.registry, self.health)
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics, health on /healthz", self.host, self.port)

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice."""
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
        self._server = self._thread = None

"""Thread-safe counters, gauges and histograms in the Prometheus text format 0.0.4, and the HTTP endpoint.

Standard library only. Labels are keyword arguments; the value is positional-only, so a label may be called
``value`` or ``amount``.

Example:
    >>> reg = MetricRegistry()
    >>> frames = Counter("demo_frames_total", "Frames scored.", ["camera"], registry=reg)
    >>> frames.inc(camera="top")
    >>> print(reg.render(), end="")
    # HELP demo_frames_total Frames scored.
    # TYPE demo_frames_total counter
    demo_frames_total{camera="top"} 1
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import PackageNotFoundError, version
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS_MS = (5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 200.0, 500.0, 1000.0)
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]
MetricT = TypeVar("MetricT", bound="_Metric")


def format_value(value: float) -> str:
    """A sample value as Prometheus parses it: integers without ``.0``, ``+Inf``, ``-Inf``, ``NaN``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def escape_label(value: str) -> str:
    r"""Escape a label value: backslash, double quote and newline (``\\``, ``\"``, ``\n``)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels_text(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{escape_label(v)}"' for k, v in pairs)
    return f"{{{inner}}}" if inner else ""


class _Metric:
    """Common part: name, help, label names, one lock, values keyed by the label values."""

    kind: ClassVar[str] = "untyped"

    def __init__(
        self, name: str, help_text: str, labelnames: Sequence[str] = (), registry: MetricRegistry | None = None
    ) -> None:
        """Validate names; register with ``registry`` when given."""
        bad = [n for n in labelnames if not _LABEL.match(n) or n.startswith("__") or n == "le"]
        if not _NAME.match(name) or bad or len(set(labelnames)) != len(labelnames):
            msg = f"invalid metric name {name!r} or label names {list(labelnames)!r}"
            raise ValueError(msg)
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()
        self._values: dict[tuple[str, ...], Any] = {}
        if not self.labelnames:
            self._values[()] = self._initial()
        if registry is not None:
            registry.register(self)

    def _initial(self) -> Any:
        return 0.0

    def _add(self, amount: float, labels: dict[str, Any]) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def _key(self, labels: dict[str, Any]) -> tuple[str, ...]:
        if labels.keys() != set(self.labelnames):
            msg = f"{self.name} takes labels {sorted(self.labelnames)}, got {sorted(labels)}"
            raise ValueError(msg)
        return tuple(str(labels[n]) for n in self.labelnames)

    def value(self, **labels: Any) -> float:
        """Current value of one label set (0 when never touched)."""
        with self._lock:
            return float(self._values.get(self._key(labels), 0.0))

    def _samples(self, snapshot: dict[tuple[str, ...], Any]) -> list[str]:
        return [
            f"{self.name}{_labels_text(zip(self.labelnames, key, strict=True))} {format_value(val)}"
            for key, val in snapshot.items()
        ]

    def render(self) -> list[str]:
        """HELP, TYPE and sample lines of this metric."""
        help_text = self.help.replace("\\", "\\\\").replace("\n", "\\n")
        with self._lock:
            snapshot = {k: (list(v) if isinstance(v, list) else v) for k, v in sorted(self._values.items())}
        return [f"# HELP {self.name} {help_text}", f"# TYPE {self.name} {self.kind}", *self._samples(snapshot)]


class Counter(_Metric):
    """A monotonically increasing count."""

    kind = "counter"

    def inc(self, amount: float = 1.0, /, **labels: Any) -> None:
        """Add ``amount`` (>= 0)."""
        if amount < 0:
            msg = f"counter {self.name} cannot decrease (inc by {amount})"
            raise ValueError(msg)
        self._add(amount, labels)


class Gauge(_Metric):
    """A value that goes up and down."""

    kind = "gauge"

    def set(self, value: float, /, **labels: Any) -> None:
        """Set to ``value``."""
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def inc(self, amount: float = 1.0, /, **labels: Any) -> None:
        """Add ``amount``."""
        self._add(amount, labels)

    def dec(self, amount: float = 1.0, /, **labels: Any) -> None:
        """Subtract ``amount``."""
        self._add(-amount, labels)


class Histogram(_Metric):
    """Observations counted into fixed buckets; state per label set is ``[count per bucket..., sum]``."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        buckets: Sequence[float],
        labelnames: Sequence[str] = (),
        registry: MetricRegistry | None = None,
    ) -> None:
        """``buckets``: strictly increasing upper bounds; ``+Inf`` is added."""
        bounds = [float(b) for b in buckets if not math.isinf(b)]
        if not bounds or any(b >= c for b, c in itertools.pairwise(bounds)):
            msg = f"histogram {name} needs strictly increasing buckets, got {list(buckets)}"
            raise ValueError(msg)
        self.buckets = (*bounds, math.inf)
        super().__init__(name, help_text, labelnames, registry)

    def _initial(self) -> list[float]:
        return [0.0] * (len(self.buckets) + 1)

    def observe(self, value: float, /, **labels: Any) -> None:
        """Record one observation (for linewatch latencies: milliseconds)."""
        key = self._key(labels)
        if math.isnan(value):
            log.warning("%s: NaN observation dropped", self.name)
            return
        index = next(i for i, bound in enumerate(self.buckets) if value <= bound)
        with self._lock:
            state = self._values.get(key)
            if state is None:
                state = self._values[key] = self._initial()
            state[index] += 1
            state[-1] += value

    def value(self, **labels: Any) -> float:
        """Number of observations of one label set."""
        with self._lock:
            state = self._values.get(self._key(labels))
            return float(sum(state[:-1])) if state else 0.0

    def _samples(self, snapshot: dict[tuple[str, ...], Any]) -> list[str]:
        lines = []
        for key, state in snapshot.items():
            pairs = list(zip(self.labelnames, key, strict=True))
            cumulative = 0.0
            for bound, count in zip(self.buckets, state, strict=False):
                cumulative += count
                le = _labels_text([*pairs, ("le", format_value(bound))])
                lines.append(f"{self.name}_bucket{le} {format_value(cumulative)}")
            lines.append(f"{self.name}_sum{_labels_text(pairs)} {format_value(state[-1])}")
            lines.append(f"{self.name}_count{_labels_text(pairs)} {format_value(cumulative)}")
        return lines


class MetricRegistry:
    """An ordered set of metrics rendered together."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._metrics: dict[str, _Metric] = {}

    def register(self, metric: MetricT) -> MetricT:
        """Add a metric (unique name) and return it."""
        with self._lock:
            if metric.name in self._metrics:
                msg = f"metric {metric.name} is already registered"
                raise ValueError(msg)
            self._metrics[metric.name] = metric
        return metric

    def render(self) -> str:
        """The whole registry in the text exposition format 0.0.4 (ends with a newline)."""
        with self._lock:
            metrics = list(self._metrics.values())
        return "".join(line + "\n" for metric in metrics for line in metric.render())


def _package_version() -> str:
    try:
        return version("linewatch")
    except PackageNotFoundError:
        return "unknown"


class Registry(MetricRegistry):
    """The edge agent's registry with every linewatch metric pre-declared as an attribute."""

    def __init__(self, build_version: str | None = None) -> None:
        super().__init__()
        cam = ["camera"]
        self.frames = Counter("linewatch_frames_total", "Frames scored.", cam, self)
        self.anomalies = Counter("linewatch_anomalies_total", "Frames judged anomalous.", cam, self)
        self.quarantined = Counter("linewatch_quarantined_total", "Unreadable frames set aside.", cam, self)
        self.latency = Histogram(
            "linewatch_frame_latency_ms", "Scoring latency per frame in milliseconds.", LATENCY_BUCKETS_MS, cam, self
        )
        self.stage_seconds = Counter("linewatch_stage_seconds_total", "Seconds spent per stage.", ["stage"], self)
        self.queue_depth = Gauge("linewatch_queue_depth", "Outbox rows waiting per channel.", ["channel"], self)
        self.camera_up = Gauge("linewatch_camera_up", "1 while the camera delivers frames.", cam, self)
        self.mqtt_connected = Gauge("linewatch_mqtt_connected", "1 while connected to the MQTT broker.", (), self)
        self.build_info = Gauge("linewatch_build_info", "Build information; always 1.", ["version"], self)
        self.build_info.set(1.0, version=build_version or _package_version())


class _Handler(BaseHTTPRequestHandler):
    """GET /metrics, GET /healthz, 404 elsewhere; access log at DEBUG through logging."""

    server: _Server

    def do_GET(self) -> None:
        """Serve one GET request."""
        path = urlsplit(self.path).path
        if path == "/metrics":
            self._send(200, CONTENT_TYPE, self.server.registry.render().encode("utf-8"))
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

    def __init__(self, address: tuple[str, int], registry: MetricRegistry, health: HealthCheck | None) -> None:
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
        self, registry: MetricRegistry, host: str = "127.0.0.1", port: int = 9108, health: HealthCheck | None = None
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

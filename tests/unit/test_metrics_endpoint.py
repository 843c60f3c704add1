"""Prometheus text format 0.0.4 parsed back, histogram buckets, label escaping, and the /metrics + /healthz server."""

from __future__ import annotations

import json
import math
import re
import threading
import urllib.error
import urllib.request

import pytest

from edge_agent.metrics import (
    CONTENT_TYPE,
    LATENCY_BUCKETS_MS,
    Counter,
    Gauge,
    Histogram,
    MetricRegistry,
    MetricsServer,
    Registry,
    escape_label,
    format_value,
)

# --- a tiny, strict parser of the text exposition format --------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], text)


def parse(text: str) -> tuple[dict[str, tuple[str, str]], list[tuple[str, dict[str, str], float]]]:
    """Return ({family: (type, help)}, [(name, labels, value)]); fails on any malformed line."""
    assert text.endswith("\n")
    families: dict[str, list[str]] = {}
    samples = []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, doc = line[7:].partition(" ")
            families.setdefault(name, ["", ""])[1] = _unescape(doc)
        elif line.startswith("# TYPE "):
            name, kind = line[7:].split(" ")
            assert kind in {"counter", "gauge", "histogram", "summary", "untyped"}
            families.setdefault(name, ["", ""])[0] = kind
        else:
            match = _SAMPLE.match(line)
            assert match, f"malformed sample line: {line!r}"
            labels = {}
            if match.group(2):
                inner = match.group(2)[1:-1]
                pairs = _PAIR.findall(inner)
                assert "".join(f'{k}="{v}"{sep}' for k, v, sep in pairs) == inner, line
                labels = {k: _unescape(v) for k, v, _ in pairs}
            samples.append((match.group(1), labels, float(match.group(3))))
    return {k: (v[0], v[1]) for k, v in families.items()}, samples


def value_of(samples, name: str, **labels: str) -> float:
    found = [v for n, lab, v in samples if n == name and lab == labels]
    assert len(found) == 1, (name, labels, found)
    return found[0]


# --- rendering ----------------------------------------------------------------------------------------------------


def test_counter_and_gauge_exact_lines():
    reg = MetricRegistry()
    frames = Counter("t_frames_total", "Frames scored.", ["camera"], registry=reg)
    up = Gauge("t_up", "Up.", registry=reg)
    frames.inc(camera="b")
    frames.inc(2, camera="a")
    frames.inc(0.5, camera="a")
    up.set(1)
    up.dec(0.25)
    assert reg.render() == (
        "# HELP t_frames_total Frames scored.\n"
        "# TYPE t_frames_total counter\n"
        't_frames_total{camera="a"} 2.5\n'
        't_frames_total{camera="b"} 1\n'
        "# HELP t_up Up.\n"
        "# TYPE t_up gauge\n"
        "t_up 0.75\n"
    )
    assert frames.value(camera="a") == 2.5
    assert frames.value(camera="never") == 0.0


def test_label_and_help_escaping_round_trip():
    reg = MetricRegistry()
    gauge = Gauge("t_escape", 'Help with \\ backslash\nand "quotes".', ["path"], registry=reg)
    nasty = 'C:\\cams\\top "line 1"\nsecond'
    gauge.set(3, path=nasty)
    text = reg.render()
    assert 't_escape{path="C:\\\\cams\\\\top \\"line 1\\"\\nsecond"} 3\n' in text
    assert '# HELP t_escape Help with \\\\ backslash\\nand "quotes".\n' in text
    families, samples = parse(text)
    assert families["t_escape"] == ("gauge", 'Help with \\ backslash\nand "quotes".')
    assert value_of(samples, "t_escape", path=nasty) == 3.0
    assert escape_label('a"b') == 'a\\"b'


def test_histogram_buckets_are_cumulative_with_inf_sum_and_count():
    reg = MetricRegistry()
    hist = Histogram("t_latency_ms", "Latency.", LATENCY_BUCKETS_MS, ["camera"], registry=reg)
    observations = [1.0, 5.0, 5.0001, 12.0, 75.0, 99.9, 1000.0, 2500.0]
    for ms in observations:
        hist.observe(ms, camera="top")
    hist.observe(float("nan"), camera="top")  # dropped, does not poison the sum
    families, samples = parse(reg.render())
    assert families["t_latency_ms"][0] == "histogram"
    expected = {5: 2, 10: 3, 20: 4, 30: 4, 50: 4, 75: 5, 100: 6, 200: 6, 500: 6, 1000: 7}
    for bound, count in expected.items():
        assert value_of(samples, "t_latency_ms_bucket", camera="top", le=format_value(bound)) == count
    assert value_of(samples, "t_latency_ms_bucket", camera="top", le="+Inf") == len(observations)
    assert value_of(samples, "t_latency_ms_count", camera="top") == len(observations)
    assert value_of(samples, "t_latency_ms_sum", camera="top") == pytest.approx(sum(observations))
    buckets = [(lab["le"], v) for n, lab, v in samples if n == "t_latency_ms_bucket"]
    assert [le for le, _ in buckets] == [*(format_value(b) for b in LATENCY_BUCKETS_MS), "+Inf"]
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)  # cumulative
    assert hist.value(camera="top") == len(observations)


def test_unlabelled_histogram_renders_zero_buckets():
    reg = MetricRegistry()
    Histogram("t_h", "H.", [1, 2], registry=reg)
    assert reg.render().splitlines()[2:] == [
        't_h_bucket{le="1"} 0',
        't_h_bucket{le="2"} 0',
        't_h_bucket{le="+Inf"} 0',
        "t_h_sum 0",
        "t_h_count 0",
    ]


def test_format_value():
    assert format_value(3.0) == "3"
    assert format_value(0.25) == "0.25"
    assert format_value(1e-7) == "1e-07"
    assert format_value(math.inf) == "+Inf"
    assert format_value(-math.inf) == "-Inf"
    assert format_value(math.nan) == "NaN"
    assert float(format_value(2.0**60)) == 2.0**60


def test_validation_errors():
    reg = MetricRegistry()
    counter = Counter("t_total", "T.", ["camera"], registry=reg)
    with pytest.raises(ValueError, match="labels"):
        counter.inc(cam="x")
    with pytest.raises(ValueError, match="labels"):
        counter.inc()
    with pytest.raises(ValueError, match="decrease"):
        counter.inc(-1, camera="x")
    with pytest.raises(ValueError, match="already registered"):
        Counter("t_total", "again", registry=reg)
    for name, labels in [("bad-name", ()), ("ok", ("le",)), ("ok", ("__x",)), ("ok", ("a", "a")), ("ok", ("1a",))]:
        with pytest.raises(ValueError, match="invalid"):
            Gauge(name, "x", labels)
    with pytest.raises(ValueError, match="increasing"):
        Histogram("t_h", "x", [5, 5])


def test_value_and_amount_may_be_label_names():
    gauge = Gauge("t_g", "G.", ["value", "amount"])
    gauge.set(4, value="v", amount="a")
    gauge.inc(1, value="v", amount="a")
    assert gauge.value(value="v", amount="a") == 5


def test_linewatch_registry_declares_every_metric():
    reg = Registry(build_version="1.2.3")
    reg.frames.inc(camera="top")
    reg.anomalies.inc(camera="top")
    reg.quarantined.inc(camera="top")
    reg.latency.observe(12.5, camera="top")
    reg.stage_seconds.inc(0.004, stage="inference")
    reg.queue_depth.set(7, channel="mqtt")
    reg.camera_up.set(1, camera="top")
    reg.mqtt_connected.set(1)
    families, samples = parse(reg.render())
    assert {name: kind for name, (kind, _) in families.items()} == {
        "linewatch_frames_total": "counter",
        "linewatch_anomalies_total": "counter",
        "linewatch_quarantined_total": "counter",
        "linewatch_frame_latency_ms": "histogram",
        "linewatch_stage_seconds_total": "counter",
        "linewatch_queue_depth": "gauge",
        "linewatch_camera_up": "gauge",
        "linewatch_mqtt_connected": "gauge",
        "linewatch_build_info": "gauge",
    }
    assert all(doc for _, doc in families.values())
    assert value_of(samples, "linewatch_build_info", version="1.2.3") == 1
    assert value_of(samples, "linewatch_frame_latency_ms_bucket", camera="top", le="20") == 1
    assert value_of(samples, "linewatch_stage_seconds_total", stage="inference") == pytest.approx(0.004)
    assert value_of(samples, "linewatch_queue_depth", channel="mqtt") == 7
    assert value_of(samples, "linewatch_mqtt_connected") == 1
    assert Registry().build_info.render()[-1].startswith('linewatch_build_info{version="')


def test_concurrent_updates_are_not_lost():
    reg = Registry(build_version="t")
    renders: list[str] = []

    def work(n: int) -> None:
        for i in range(2000):
            reg.frames.inc(camera=f"c{n % 2}")
            reg.latency.observe(i % 300, camera="x")
            if i % 500 == 0:
                renders.append(reg.render())

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert reg.frames.value(camera="c0") + reg.frames.value(camera="c1") == 16000
    _, samples = parse(reg.render())
    assert value_of(samples, "linewatch_frame_latency_ms_count", camera="x") == 16000
    for text in renders:
        parse(text)


# --- HTTP endpoint -------------------------------------------------------------------------------------------------


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


@pytest.fixture
def served():
    reg = Registry(build_version="9.9.9")
    state = {"ok": True, "raise": False}

    def health():
        if state["raise"]:
            raise RuntimeError("store unreachable")
        return state["ok"], {"cameras": {"top": state["ok"]}, "queues": {"mqtt": 0}}

    server = MetricsServer(reg, "127.0.0.1", 0, health)
    server.start()
    try:
        yield reg, state, server, f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


def test_metrics_endpoint_serves_exposition_format(served):
    reg, _, server, base = served
    assert server.port > 0
    reg.frames.inc(camera="top")
    code, ctype, body = _get(base + "/metrics")
    assert code == 200
    assert ctype == CONTENT_TYPE
    assert ctype.startswith("text/plain; version=0.0.4")
    _, samples = parse(body.decode("utf-8"))
    assert value_of(samples, "linewatch_frames_total", camera="top") == 1
    assert _get(base + "/metrics?name[]=x")[0] == 200


def test_healthz_200_then_503(served):
    _, state, _, base = served
    code, ctype, body = _get(base + "/healthz")
    assert (code, ctype) == (200, "application/json")
    assert json.loads(body) == {"healthy": True, "cameras": {"top": True}, "queues": {"mqtt": 0}}
    state["ok"] = False
    code, _, body = _get(base + "/healthz")
    assert code == 503
    assert json.loads(body)["healthy"] is False
    state["raise"] = True
    code, _, body = _get(base + "/healthz")
    assert code == 503
    assert json.loads(body) == {"healthy": False, "error": "RuntimeError: store unreachable"}


def test_unknown_path_is_404_and_requests_are_not_logged_to_stderr(served, capfd):
    _, _, _, base = served
    assert _get(base + "/")[0] == 404
    assert _get(base + "/metricsx")[0] == 404
    assert _get(base + "/metrics")[0] == 200
    assert capfd.readouterr().err == ""


def test_server_lifecycle():
    server = MetricsServer(MetricRegistry(), "127.0.0.1", 0)
    assert server.port == 0
    server.start()
    port = server.port
    with pytest.raises(RuntimeError):
        server.start()
    assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200  # no health callable: healthy
    server.stop()
    server.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)

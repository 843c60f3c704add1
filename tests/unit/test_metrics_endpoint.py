"""The agent's metrics on prometheus_client, parsed back with its own parser, and the /metrics + /healthz server."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client.metrics_core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.metrics import CONTENT_TYPE, MetricsServer, Registry


def families(text: bytes | str) -> dict[str, object]:
    """Metric families by name, parsed with prometheus_client's parser (fails on a malformed exposition)."""
    body = text.decode("utf-8") if isinstance(text, bytes) else text
    return {f.name: f for f in text_string_to_metric_families(body)}


def sample(text: bytes, name: str, **labels: str) -> float:
    """The one sample called ``name`` with exactly ``labels``."""
    found = [
        s.value
        for fam in text_string_to_metric_families(text.decode("utf-8"))
        for s in fam.samples
        if s.name == name and s.labels == labels
    ]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_linewatch_registry_declares_every_metric_with_its_type():
    reg = Registry(build_version="1.2.3")
    reg.frames.labels(camera="top").inc()
    reg.quarantined.labels(camera="top", reason="undecodable").inc()
    reg.latency.labels(camera="top").observe(0.015)
    reg.stage.labels(camera="top", stage="score").observe(0.004)
    reg.retention_deleted.labels(kind="files").inc(3)
    reg.model.labels(camera="top").info({"model": "bottle", "version": "7", "hash": "abc"})
    body = reg.render()
    assert b"_created" not in body
    fams = families(body)
    expected = {
        "linewatch_frames": "counter",
        "linewatch_anomalies": "counter",
        "linewatch_quarantined_frames": "counter",
        "linewatch_frame_latency_seconds": "histogram",
        "linewatch_stage_seconds": "histogram",
        "linewatch_s3_batches": "counter",
        "linewatch_retention_deleted": "counter",
        "linewatch_retention_freed_bytes": "counter",
        "linewatch_retention_pass_seconds": "histogram",
        "linewatch_evidence_bytes": "gauge",
        "linewatch_model_info": "gauge",  # an info metric in the text format 0.0.4
        "linewatch_build_info": "gauge",
    }
    assert {name: fams[name].type for name in expected} == expected
    assert sample(body, "linewatch_frames_total", camera="top") == 1
    assert sample(body, "linewatch_quarantined_frames_total", camera="top", reason="undecodable") == 1
    assert sample(body, "linewatch_frame_latency_seconds_bucket", camera="top", le="0.02") == 1
    assert sample(body, "linewatch_frame_latency_seconds_bucket", camera="top", le="0.01") == 0
    assert sample(body, "linewatch_stage_seconds_sum", camera="top", stage="score") == pytest.approx(0.004)
    assert sample(body, "linewatch_retention_deleted_total", kind="files") == 3
    assert sample(body, "linewatch_model_info", camera="top", model="bottle", version="7", hash="abc") == 1
    assert sample(body, "linewatch_build_info", version="1.2.3") == 1


def test_registries_are_independent():
    a, b = Registry(build_version="t"), Registry(build_version="t")
    a.frames.labels(camera="x").inc(5)
    assert b"linewatch_frames_total{" not in b.render()


def test_scrape_time_collector_and_a_failing_one():
    reg = Registry(build_version="t")
    depth = {"mqtt": 3}
    reg.add_collector(lambda: [GaugeMetricFamily("t_depth", "Depth.", value=depth["mqtt"])])
    assert sample(reg.render(), "t_depth") == 3
    depth["mqtt"] = 9  # read at scrape time, not when registered
    assert sample(reg.render(), "t_depth") == 9

    def broken():
        raise RuntimeError("store unreachable")

    reg.add_collector(broken)
    assert sample(reg.render(), "t_depth") == 9  # the rest of the scrape still works


def test_concurrent_updates_are_not_lost():
    reg = Registry(build_version="t")

    def work():
        for _ in range(2000):
            reg.frames.labels(camera="x").inc()
            reg.latency.labels(camera="x").observe(0.01)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    body = reg.render()
    assert sample(body, "linewatch_frames_total", camera="x") == 16000
    assert sample(body, "linewatch_frame_latency_seconds_count", camera="x") == 16000


# --- HTTP ---------------------------------------------------------------------------------------------------------


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
        return state["ok"], {"cameras": {"top": {"healthy": state["ok"]}}, "queues": {"mqtt": 0}}

    server = MetricsServer(reg, "127.0.0.1", 0, health)
    server.start()
    try:
        yield reg, state, server, f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


def test_metrics_endpoint_serves_exposition_format(served):
    reg, _, server, base = served
    assert server.port > 0
    reg.frames.labels(camera="top").inc()
    code, ctype, body = _get(base + "/metrics")
    assert code == 200
    assert ctype == CONTENT_TYPE
    assert ctype.startswith("text/plain; version=")
    assert sample(body, "linewatch_frames_total", camera="top") == 1
    assert _get(base + "/metrics?name[]=x")[0] == 200


def test_healthz_200_then_503(served):
    _, state, _, base = served
    code, ctype, body = _get(base + "/healthz")
    assert (code, ctype) == (200, "application/json")
    assert json.loads(body) == {"healthy": True, "cameras": {"top": {"healthy": True}}, "queues": {"mqtt": 0}}
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
    server = MetricsServer(Registry(build_version="t"), "127.0.0.1", 0)
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

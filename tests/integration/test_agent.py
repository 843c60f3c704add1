"""The whole agent on real bottle images: folder camera -> int8 bundle -> SQLite, real mosquitto, real moto S3.

The broker and S3 go down mid-run; afterwards every anomalous verdict has exactly one alert and its S3 objects.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import boto3
import paho.mqtt.client as mqtt
import pytest

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from tests.services import free_port, mosquitto, moto_s3  # noqa: F401


class Collector:
    """Subscriber counting alerts by message id (a receiver de-duplicating as the outbox expects)."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        self.ids: list[str] = []
        self.payloads: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="collector", clean_session=False)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.subscribed = threading.Event()
        self.client.reconnect_delay_set(0.1, 0.3)  # back before the agent's publisher (>= 1 s back-off)
        self.client.connect(host, port)
        self.client.loop_start()
        assert self.subscribed.wait(5), "collector got no SUBACK"

    def _on_message(self, _client, _userdata, msg) -> None:
        payload = json.loads(msg.payload)
        with self.lock:
            self.ids.append(payload["message_id"])
            self.payloads[payload["message_id"]] = payload

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def test_agent_end_to_end_with_outages(tmp_path, bottle_bundle, datasets_root, mosquitto, moto_s3, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    cfg = AgentConfig.model_validate(
        {
            "agent": {"name": "it", "data_dir": str(tmp_path / "data")},
            "database": {"url": f"sqlite:///{tmp_path / 'agent.db'}"},
            "cameras": [
                {
                    "id": "cam1",
                    "bundle": str(bottle_bundle),
                    "source": {"type": "folder", "path": str(incoming), "after": "move", "stable_seconds": 0.1},
                }
            ],
            "mqtt": {"enabled": True, "host": mosquitto.host, "port": mosquitto.port, "prefix": "lw"},
            "s3": {"enabled": True, "bucket": "lw-test", "endpoint_url": moto_s3.endpoint_url},
            "delivery": {"retry_min_seconds": 1.0, "retry_max_seconds": 3.0},
            "metrics": {"enabled": True, "port": 0},
        }
    )
    collector = Collector(mosquitto.host, mosquitto.port, "lw/it/cameras/+/alerts")
    agent = Agent(cfg)
    agent.start()
    test_dir = datasets_root / "mvtec_ad" / "bottle" / "test"
    images = sorted(test_dir.glob("good/*.png"))[:8] + sorted(test_dir.glob("broken_large/*.png"))[:8]
    try:
        for i, path in enumerate(images):
            if i == 4:
                mosquitto.stop()
            if i == 8:
                moto_s3.stop()
            shutil.copyfile(path, incoming / f"{path.parent.name}_{path.name}")
        wait_for(lambda: agent.store.counts(None).get("cam1", {}).get("frames", 0) == len(images), 120, "verdicts")
        time.sleep(1.0)
        mosquitto.start()
        moto_s3.start()
        wait_for(lambda: agent.store.queue_depths() == {"mqtt": 0, "s3": 0}, 60, "outbox to drain")
        metrics_port = agent.metrics_server.port
    finally:
        agent.stop()
    wait_for(lambda: len(set(collector.ids)) >= 1, 10, "alerts")
    collector.close()

    db = sqlite3.connect(tmp_path / "agent.db")
    rows = db.execute("SELECT frame_id, anomalous, heatmap_path, defect_type FROM verdicts").fetchall()
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert len(rows) == len(images)
    anomalous = {r[0] for r in rows if r[1]}
    assert {f for f in anomalous if f.startswith("broken_large")} == {f"broken_large_{p.name}" for p in images[8:]}
    assert all(Path(r[2]).is_file() for r in rows if r[1])
    expected_ids = {f"it:cam1:{f}" for f in anomalous}
    assert set(collector.ids) == expected_ids
    payload = collector.payloads[next(iter(expected_ids))]
    assert payload["anomalous"] is True and payload["camera"] == "cam1" and payload["heatmap_s3_key"]
    s3 = boto3.client("s3", endpoint_url=moto_s3.endpoint_url, region_name="us-east-1")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="lw-test").get("Contents", [])}
    # moto keeps objects in memory: only what was delivered after its restart is there, which is
    # everything queued during the outage (the first 8 records went before it and are gone with it).
    late = [r[0] for r in rows if r[0].startswith("broken_large")]
    for frame_id in late:
        stem = next(k for k in keys if k.endswith(f"{frame_id}.json"))
        assert stem.startswith("it/cam1/")
        assert stem.replace(".json", ".heatmap.jpg") in keys
    assert not list(incoming.glob("*.png"))
    assert metrics_port > 0

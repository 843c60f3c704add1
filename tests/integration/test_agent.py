"""The whole agent on real bottle images: folder camera -> int8 bundle -> SQLite, real mosquitto, real moto S3.

The broker and S3 go down mid-run; afterwards every anomalous verdict has exactly one alert and its S3 objects.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sqlite3
import time
import urllib.request
from pathlib import Path

import boto3
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from tests.harness import Subscriber, wait_until
from tests.services import free_port, mosquitto, moto_s3  # noqa: F401


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
    collector = Subscriber(  # a persistent session, back before the agent's publisher (>= 1 s back-off)
        mosquitto.host,
        mosquitto.port,
        "lw/it/cameras/+/alerts",
        client_id="collector",
        clean_session=False,
        reconnect_delay=(0.1, 0.3),
    )
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
        wait_until(lambda: agent.store.counts(None).get("cam1", {}).get("frames", 0) == len(images), 120, "verdicts")
        time.sleep(1.0)
        mosquitto.start()
        moto_s3.start()
        wait_until(lambda: agent.store.queue_depths() == {"mqtt": 0, "s3": 0}, 60, "outbox to drain")
        metrics_port = agent.metrics_server.port
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
            scraped = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(resp.read().decode("utf-8"))
                for s in family.samples
            }
    finally:
        agent.stop()
    wait_until(lambda: len(set(collector.message_ids())) >= 1, 10, "alerts")
    collector.close()

    db = sqlite3.connect(tmp_path / "agent.db")
    rows = db.execute("SELECT frame_id, anomalous, heatmap_path, defect_type FROM verdicts").fetchall()
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert len(rows) == len(images)
    anomalous = {r[0] for r in rows if r[1]}
    assert {f for f in anomalous if f.startswith("broken_large")} == {f"broken_large_{p.name}" for p in images[8:]}
    assert all(Path(r[2]).is_file() for r in rows if r[1])
    expected_ids = {f"it:cam1:{f}" for f in anomalous}
    assert set(collector.message_ids()) == expected_ids
    payload = {json.loads(m.payload)["message_id"]: json.loads(m.payload) for m in collector.received()}[
        next(iter(expected_ids))
    ]
    assert payload["anomalous"] is True and payload["camera"] == "cam1" and payload["heatmap_s3_key"]
    s3 = boto3.client("s3", endpoint_url=moto_s3.endpoint_url, region_name="us-east-1")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="lw-test").get("Contents", [])}
    # moto keeps objects in memory: only what was delivered after its restart is there, which is
    # everything queued during the outage (the first 8 records went before it and are gone with it).
    late = [r[0] for r in rows if r[0].startswith("broken_large")]
    for frame_id in late:
        stem = next(k for k in keys if k.endswith(f"{frame_id}.json"))
        assert stem.startswith("it/cam1/")
        assert stem.replace(".json", ".heatmap.png") in keys
    assert not list(incoming.glob("*.png"))
    # normal verdicts: batched when the agent stopped (S3 back up), each in exactly one gzipped JSON-lines object
    batches = [k for k in keys if k.endswith(".jsonl.gz")]
    assert batches and all(k.startswith("it/cam1/") for k in batches)
    lines = [
        json.loads(line)
        for k in batches
        for line in gzip.decompress(s3.get_object(Bucket="lw-test", Key=k)["Body"].read()).splitlines()
    ]
    normal = sorted(f"it:cam1:{r[0]}" for r in rows if not r[1])
    assert sorted(line["message_id"] for line in lines) == normal
    assert not any(k.endswith(f"{r[0]}.json") for r in rows if not r[1] for k in keys)  # no per-frame object
    # /metrics parsed with prometheus_client's parser
    assert scraped[("linewatch_frames_total", (("camera", "cam1"),))] == len(images)
    assert scraped[("linewatch_anomalies_total", (("camera", "cam1"),))] == len(anomalous)
    assert scraped[("linewatch_outbox_depth", (("channel", "s3"),))] == 0
    assert scraped[("linewatch_stage_seconds_count", (("camera", "cam1"), ("stage", "score")))] == len(images)
    assert ("linewatch_mqtt_connected", ()) in scraped

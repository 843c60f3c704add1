"""Outbox delivery against a real mosquitto broker and a real moto S3 server: order, outages, last will."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest
from sqlalchemy import text

from edge_agent.config import DeliveryConfig, MQTTConfig, S3Config
from edge_agent.delivery import DeliveryResult
from edge_agent.delivery.mqtt import MQTTPublisher
from edge_agent.delivery.s3 import S3Mirror
from edge_agent.delivery.worker import DeliveryWorker
from edge_agent.records import OutboxMessage, VerdictRecord
from edge_agent.secrets import read_secret, redact
from edge_agent.store import OutboxItem, Store
from tests.harness import Subscriber, wait_until
from tests.services import mosquitto, mosquitto_auth, moto_s3  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
PREFIX = "lwtest"
CAPTURED = datetime(2025, 6, 7, 23, 59, 30, tzinfo=UTC)


def make_verdict(frame_id: str, camera: str = "cam1") -> VerdictRecord:
    return VerdictRecord(
        camera=camera,
        source="folder",
        frame_id=frame_id,
        captured_at=CAPTURED,
        processed_at=datetime.now(UTC),
        model_name="patchcore",
        model_version="1",
        model_hash="h",
        score=0.9,
        normalised_score=1.3,
        threshold=0.5,
        anomalous=True,
        defect_type=None,
        type_confidence=None,
        heatmap_path=None,
        image_path=None,
        latency_ms=5.0,
    )


def alert(pub: MQTTPublisher, agent: str, verdict: VerdictRecord) -> OutboxMessage:
    message_id = f"{agent}:{verdict.camera}:{verdict.frame_id}"
    payload = json.dumps({**verdict.to_json_dict(), "message_id": message_id})
    return OutboxMessage("mqtt", message_id, payload=payload, topic=pub.alert_topic(verdict.camera))


def mqtt_cfg(service, **kw) -> MQTTConfig:
    return MQTTConfig(enabled=True, host=service.host, port=service.port, prefix=PREFIX, **kw)


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'db' / 'linewatch.db'}")
    yield s
    s.close()


def test_alerts_status_stats_and_stopped(mosquitto, store):
    agent = "agent-basic"
    rx = Subscriber(mosquitto.host, mosquitto.port, f"{PREFIX}/{agent}/#")
    pub = MQTTPublisher(mqtt_cfg(mosquitto), agent, autostart=False)
    assert not pub.connected
    pub.start()
    worker = DeliveryWorker(store, [pub], DeliveryConfig(retry_min_seconds=0.2, retry_max_seconds=1.0))
    worker.start()
    try:
        assert pub.wait_connected(5)
        wait_until(lambda: rx.payloads(pub.availability_topic) == ["online"], 5, "availability online")
        pub.set_camera_status("cam1", "running")
        verdicts = [make_verdict(f"img-{i}.png") for i in range(4)]
        for v in verdicts:
            assert store.record(v, [alert(pub, agent, v)])[1]
            worker.wake()
        topic = pub.alert_topic("cam1")
        assert topic == f"{PREFIX}/{agent}/cameras/cam1/alerts"
        wait_until(lambda: len(rx.payloads(topic)) == 4, 10, "4 alerts")
        received = [json.loads(p) for p in rx.payloads(topic)]
        assert [r["message_id"] for r in received] == [f"{agent}:cam1:img-{i}.png" for i in range(4)]
        assert received[0]["score"] == 0.9 and received[0]["captured_at"] == CAPTURED.isoformat()
        assert rx.payloads(pub.status_topic("cam1")) == ["running"]
        assert pub.publish_stats({"frames": 4, "queue": store.queue_depths()})
        wait_until(lambda: rx.payloads(pub.stats_topic) != [], 5, "stats")
        assert json.loads(rx.payloads(pub.stats_topic)[0])["frames"] == 4
        wait_until(lambda: store.queue_depths()["mqtt"] == 0, 5, "empty mqtt queue")
        assert worker.counters()["mqtt"]["delivered"] == 4
    finally:
        worker.stop(flush_seconds=2)
        pub.close()
    wait_until(lambda: rx.payloads(pub.availability_topic)[-1:] == ["stopped"], 5, "availability stopped")
    rx.close()
    late = Subscriber(mosquitto.host, mosquitto.port, f"{PREFIX}/{agent}/#")  # retained state seen by newcomers
    try:
        wait_until(lambda: len(late.received()) >= 2, 5, "retained messages")
        retained = {m.topic: m.text for m in late.received() if m.retain}
        assert retained[pub.availability_topic] == "stopped"
        assert retained[pub.status_topic("cam1")] == "running"
        assert pub.alert_topic("cam1") not in retained  # events are never retained
    finally:
        late.close()


CRASHER = """
import sys, time
from edge_agent.config import MQTTConfig
from edge_agent.delivery.mqtt import MQTTPublisher
pub = MQTTPublisher(MQTTConfig(enabled=True, host=sys.argv[1], port=int(sys.argv[2]), prefix=sys.argv[3]), "crasher")
print("ready" if pub.wait_connected(10) else "failed", flush=True)
time.sleep(120)
"""


def test_last_will_offline_when_killed(mosquitto):
    rx = Subscriber(mosquitto.host, mosquitto.port, f"{PREFIX}/crasher/availability")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHER, mosquitto.host, str(mosquitto.port), PREFIX],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        wait_until(lambda: rx.payloads(f"{PREFIX}/crasher/availability")[-1:] == ["online"], 5, "online")
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        wait_until(lambda: rx.payloads(f"{PREFIX}/crasher/availability")[-1:] == ["offline"], 10, "last will")
    finally:
        if proc.poll() is None:
            proc.kill()
        rx.close()


def test_unreachable_broker_fails_fast_and_is_not_connected(store):
    from tests.services import free_port

    pub = MQTTPublisher(MQTTConfig(enabled=True, host="127.0.0.1", port=free_port(), prefix=PREFIX), "nobody")
    try:
        assert not pub.wait_connected(0.5)
        started = time.monotonic()
        assert not pub.publish_alert(pub.alert_topic("cam1"), "{}")
        assert time.monotonic() - started < 0.1
        assert pub.publish_stats({"x": 1}) is False
    finally:
        pub.close()


def test_password_from_credentials_and_refused_login(mosquitto_auth, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG, logger="edge_agent")
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "mqtt-password").write_text(mosquitto_auth.password + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.setenv("LW_MQTT_USER", mosquitto_auth.username)
    monkeypatch.setenv("LW_MQTT_PASSWORD", "wrong-password-123")
    assert read_secret("LW_MQTT_PASSWORD", "mqtt-password") == mosquitto_auth.password  # credential wins
    assert read_secret("LW_MQTT_PASSWORD", "absent") == "wrong-password-123"
    assert redact(f"x{mosquitto_auth.password}y", [mosquitto_auth.password, None]) == "x***y"

    good = MQTTPublisher(
        mqtt_cfg(mosquitto_auth, username_env="LW_MQTT_USER", password_credential="mqtt-password"), "auth-ok"
    )
    bad = MQTTPublisher(
        mqtt_cfg(mosquitto_auth, username_env="LW_MQTT_USER", password_env="LW_MQTT_PASSWORD"), "auth-bad"
    )
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    try:
        assert good.wait_connected(5)
        assert good.publish_alert(good.alert_topic("cam1"), '{"message_id": "a"}')
        wait_until(lambda: "refused" in caplog.text, 5, "the broker to refuse the wrong password")
        assert not bad.connected  # a refused CONNACK never counts as connected
        assert not bad.publish_alert(bad.alert_topic("cam1"), "{}")
    finally:
        good.close()
        bad.close()
    assert mosquitto_auth.password not in caplog.text
    assert "wrong-password-123" not in caplog.text


def test_broker_outage_loses_nothing_and_keeps_order(mosquitto, store):
    agent = "agent-outage"
    cfg = DeliveryConfig(retry_min_seconds=2.0, retry_max_seconds=2.0, batch_size=3)
    pub = MQTTPublisher(mqtt_cfg(mosquitto), agent, publish_timeout=2.0, reconnect_min_delay=0.2, reconnect_max_delay=1)
    topic = pub.alert_topic("cam1")
    receivers = [Subscriber(mosquitto.host, mosquitto.port, f"{PREFIX}/{agent}/#")]
    worker = DeliveryWorker(store, [pub], cfg, interval=0.2)
    assert pub.wait_connected(5)
    pub.set_camera_status("cam1", "running")
    worker.start()
    expected: list[str] = []

    def record(i: int) -> None:
        v = make_verdict(f"frame-{i:03d}")
        msg = alert(pub, agent, v)
        expected.append(msg.key)
        store.record(v, [msg])
        worker.wake()

    def ids() -> list[str]:
        return [json.loads(p)["message_id"] for rx in receivers for p in rx.payloads(topic)]

    try:
        for i in range(5):
            record(i)
        wait_until(lambda: len(ids()) == 5, 10, "alerts before the outage")
        mosquitto.stop()
        wait_until(lambda: not pub.connected, 5, "publisher to notice the outage")
        for i in range(5, 15):
            record(i)
        # the first queued alert failed and now waits 2 s for its retry: time to restart and resubscribe
        wait_until(lambda: worker.counters()["mqtt"]["failed"] >= 1, 10, "a failed attempt")
        assert store.queue_depths()["mqtt"] == 10
        mosquitto.start()
        receivers.append(Subscriber(mosquitto.host, mosquitto.port, f"{PREFIX}/{agent}/#"))
        wait_until(lambda: len(set(ids())) == 15, 20, "every alert after the restart")
        wait_until(lambda: store.queue_depths()["mqtt"] == 0, 5, "an empty queue")
    finally:
        worker.stop(flush_seconds=1)
        pub.close()
    seen = ids()
    assert list(dict.fromkeys(seen)) == expected  # in order, none lost
    assert sorted(set(seen)) == sorted(expected) and len(set(seen)) == 15  # each id exactly once after de-dup
    after = receivers[1]
    wait_until(lambda: "online" in after.payloads(pub.availability_topic), 5, "online after reconnect")
    assert after.payloads(pub.status_topic("cam1"))[:1] == ["running"]  # re-published, broker had no persistence
    for rx in receivers:
        rx.close()


def s3_env(monkeypatch) -> tuple[str, str]:
    access, secret = "AKIALINEWATCHTEST01", "sEcReT/linewatch+test-key-0123456789"
    monkeypatch.setenv("LW_S3_ACCESS", access)
    monkeypatch.setenv("LW_S3_SECRET", secret)
    return access, secret


def s3_cfg(service, bucket: str) -> S3Config:
    return S3Config(
        enabled=True,
        bucket=bucket,
        prefix="mirror/",
        endpoint_url=service.endpoint_url,
        access_key_env="LW_S3_ACCESS",
        secret_key_env="LW_S3_SECRET",
    )


def read_object(service, bucket: str, key: str) -> bytes:
    client = boto3.client(
        "s3",
        endpoint_url=service.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="y",
    )
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def s3_messages(mirror: S3Mirror, verdict: VerdictRecord, image: Path | None = None) -> list[OutboxMessage]:
    key = mirror.key_for(verdict.camera, verdict.captured_at, verdict.frame_id, ".json")
    out = [OutboxMessage("s3", key, payload=json.dumps(verdict.to_json_dict()))]
    if image is not None:
        out.append(
            OutboxMessage(
                "s3",
                mirror.key_for(verdict.camera, verdict.captured_at, verdict.frame_id, ".png"),
                file_path=str(image),
                content_type="image/png",
            )
        )
    return out


def test_s3_objects_under_dated_keys(moto_s3, store, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG, logger="edge_agent")
    access, secret = s3_env(monkeypatch)
    mirror = S3Mirror(s3_cfg(moto_s3, "lw-keys"), "line1")  # the bucket is created before the first upload
    key = mirror.key_for("cam1", CAPTURED, "a/b.png", ".json")  # the frame id made safe as for local file names
    assert re.fullmatch(r"mirror/line1/cam1/2025/06/07/a_b-[0-9a-f]{8}\.png\.json", key), key
    image = tmp_path / "img.png"
    image.write_bytes(b"\x89PNG fake image bytes")
    worker = DeliveryWorker(store, [mirror], DeliveryConfig(retry_min_seconds=0.2, retry_max_seconds=1.0))
    worker.start()
    try:
        v1, v2, v3 = (make_verdict(f"part-{i}") for i in range(3))
        store.record(v1, s3_messages(mirror, v1, image))
        store.record(v2, s3_messages(mirror, v2, tmp_path / "vanished.png"))  # file gone: dead, not blocking
        store.record(v3, s3_messages(mirror, v3))
        worker.wake()
        wait_until(lambda: store.queue_depths()["s3"] == 0, 15, "an empty s3 queue")
    finally:
        worker.stop(flush_seconds=1)
    assert worker.counters()["s3"] == {"delivered": 4, "failed": 0, "dead": 1}
    body = json.loads(read_object(moto_s3, "lw-keys", "mirror/line1/cam1/2025/06/07/part-0.json"))
    assert body["frame_id"] == "part-0" and body["anomalous"] is True
    assert read_object(moto_s3, "lw-keys", "mirror/line1/cam1/2025/06/07/part-0.png") == image.read_bytes()
    assert json.loads(read_object(moto_s3, "lw-keys", "mirror/line1/cam1/2025/06/07/part-2.json"))["score"] == 0.9
    assert "vanished.png is gone" in caplog.text
    with store.engine.connect() as conn:
        dead = conn.execute(text("SELECT key, last_error FROM outbox WHERE status = 'dead'")).all()
    assert [(k, e.endswith("vanished.png is gone")) for k, e in dead] == [
        (mirror.key_for("cam1", CAPTURED, "part-1", ".png"), True)
    ]
    assert secret not in caplog.text and access not in caplog.text


def test_s3_outage_queues_and_delivers_after_return(moto_s3, store, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG, logger="edge_agent")
    access, secret = s3_env(monkeypatch)
    mirror = S3Mirror(s3_cfg(moto_s3, "lw-outage"), "line1", connect_timeout=1.0, read_timeout=3.0)
    assert mirror.ensure_bucket()
    worker = DeliveryWorker(store, [mirror], DeliveryConfig(retry_min_seconds=0.3, retry_max_seconds=1.0), 0.2)
    worker.start()
    verdicts = [make_verdict(f"out-{i}") for i in range(6)]
    try:
        moto_s3.stop()
        item = OutboxItem(0, 0, "s3", "mirror/x.json", None, "{}", None, "application/json", 0, CAPTURED, CAPTURED)
        assert mirror.upload(item).result is DeliveryResult.RETRY and not mirror.upload(item)
        for v in verdicts:
            store.record(v, s3_messages(mirror, v))
            worker.wake()
        wait_until(lambda: worker.counters()["s3"]["failed"] >= 2, 15, "failed uploads during the outage")
        assert store.queue_depths()["s3"] == 6
        with store.engine.connect() as conn:  # the reason is kept with the row, without secrets
            errors = conn.execute(text("SELECT last_error FROM outbox WHERE attempts > 0")).scalars().all()
        assert errors and all(errors) and not any(secret in e or access in e for e in errors)
        moto_s3.start(timeout=60)  # moto forgets its buckets on restart: the mirror re-creates it (NoSuchBucket)
        wait_until(lambda: store.queue_depths()["s3"] == 0, 20, "the queue to drain after the outage")
    finally:
        worker.stop(flush_seconds=1)
        if not moto_s3.running:
            moto_s3.start(timeout=60)
    for v in verdicts:
        body = json.loads(read_object(moto_s3, "lw-outage", f"mirror/line1/cam1/2025/06/07/{v.frame_id}.json"))
        assert body["frame_id"] == v.frame_id
    assert "S3 upload of" in caplog.text
    assert secret not in caplog.text and access not in caplog.text

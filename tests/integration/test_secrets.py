"""No secret in config files, logs, MQTT messages, S3 objects or the database.

The agent runs end to end on real bottle images with its MQTT password and S3 secret key in systemd credential
files, user name and access key in environment variables, against a TLS mosquitto with passwords and a moto
S3 server; then every log record (DEBUG, every logger), every MQTT message, every S3 object and the SQLite file
are searched for the secret strings.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path

import boto3
import pytest
import yaml

from edge_agent.agent import Agent
from edge_agent.config import load_agent_config
from tests.harness import Subscriber, wait_until
from tests.services import mosquitto_tls, moto_s3  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
SECRET_KEY = re.compile(r"(password|passwd|secret|token|private|api_?key|access_?key)", re.IGNORECASE)
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
CREDENTIAL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
PBKDF2 = re.compile(r"^pbkdf2_sha256\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$")


def test_no_secret_anywhere_after_an_end_to_end_run(
    tmp_path, bottle_bundle, datasets_root, mosquitto_tls, moto_s3, monkeypatch, caplog
):
    caplog.set_level(logging.DEBUG)  # every logger: the agent's, paho's, botocore's, alembic's
    mqtt_password = mosquitto_tls.users["linewatch"]
    s3_secret = f"s3-secret-{os.urandom(16).hex()}"
    decoy = f"unused-env-secret-{os.urandom(8).hex()}"  # in the environment, overridden by the credential
    access_key = f"AKIALW{os.urandom(7).hex().upper()}"
    secrets = {"mqtt password": mqtt_password, "s3 secret key": s3_secret, "decoy": decoy}
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "mqtt-password").write_text(mqtt_password + "\n")
    (creds / "s3-secret-key").write_text(s3_secret + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.setenv("LW_MQTT_USER", "linewatch")
    monkeypatch.setenv("LW_MQTT_PASSWORD", decoy)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", decoy)

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    config = {
        "agent": {"name": "sec", "data_dir": str(tmp_path / "data"), "log_level": "DEBUG", "min_free_mb": 0},
        "database": {"url": f"sqlite:///{tmp_path / 'agent.db'}"},
        "cameras": [
            {
                "id": "cam1",
                "bundle": str(bottle_bundle),
                "source": {"type": "folder", "path": str(incoming), "stable_seconds": 0.1},
            }
        ],
        "mqtt": {
            "enabled": True,
            "host": mosquitto_tls.host,
            "port": mosquitto_tls.port,
            "prefix": "lwsecrets",
            "stats_interval_seconds": 0.5,
            "username_env": "LW_MQTT_USER",
            "password_env": "LW_MQTT_PASSWORD",
            "password_credential": "mqtt-password",
            "tls": {"enabled": True, "ca_file": str(mosquitto_tls.ca_file)},
        },
        "s3": {
            "enabled": True,
            "bucket": "lw-secrets",
            "endpoint_url": moto_s3.endpoint_url,
            "access_key_env": "AWS_ACCESS_KEY_ID",
            "secret_key_env": "AWS_SECRET_ACCESS_KEY",
            "secret_key_credential": "s3-secret-key",
        },
        "delivery": {"retry_min_seconds": 0.5, "retry_max_seconds": 2.0},
        "metrics": {"enabled": False},
    }
    config_file = tmp_path / "agent.yaml"
    config_file.write_text(yaml.safe_dump(config))
    cfg = load_agent_config(config_file)

    test = datasets_root / "mvtec_ad" / "bottle" / "test"
    images = sorted(test.glob("good/*.png"))[:3] + sorted(test.glob("broken_large/*.png"))[:3]
    reader = Subscriber(
        mosquitto_tls.host,
        mosquitto_tls.port,
        "#",
        ca_file=mosquitto_tls.ca_file,
        username="reader",
        password=mosquitto_tls.users["reader"],
    )
    agent = Agent(cfg)
    agent.start()
    try:
        assert agent.mqtt is not None and agent.mqtt.wait_connected(15), "agent not connected over TLS"
        for path in images:
            shutil.copyfile(path, incoming / f"{path.parent.name}_{path.name}")

        def scored_and_delivered() -> bool:
            agent._maybe_publish_stats()  # what run_forever does each second
            frames = agent.store.counts(None).get("cam1", {}).get("frames", 0)
            return frames >= len(images) and not any(agent.store.queue_depths().values())

        wait_until(scored_and_delivered, 120, "every verdict and its outbox rows", interval=0.2)
        time.sleep(0.6)  # a fast run can end within one stats interval: publish one snapshot for sure
        agent._maybe_publish_stats()
    finally:
        agent.stop()
    time.sleep(0.5)
    reader.close()

    s3 = boto3.client("s3", endpoint_url=moto_s3.endpoint_url, region_name="us-east-1")
    objects: dict[str, bytes] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="lw-secrets"):
        for obj in page.get("Contents", []):
            got = s3.get_object(Bucket="lw-secrets", Key=obj["Key"])
            objects[obj["Key"]] = got["Body"].read() + repr(got.get("Metadata", {})).encode()
    topics = {m.topic for m in reader.received()}
    alerts = [t for t in topics if t.endswith("/alerts")]
    assert alerts and "lwsecrets/sec/availability" in topics and "lwsecrets/sec/stats" in topics, topics
    assert any(k.endswith(".json") for k in objects) and any(k.endswith(".heatmap.png") for k in objects)
    database = b"".join(p.read_bytes() for p in tmp_path.glob("agent.db*"))
    logs = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert "secret read from credential s3-secret-key" in logs  # the names are logged, never the values

    places = {
        "the config file": config_file.read_bytes(),
        "the logs": logs.encode(),
        **{f"MQTT {m.topic}": m.payload for m in reader.received()},
        **{f"S3 {key}": body for key, body in objects.items()},
        "the database": database,
    }
    for what, secret in secrets.items():
        for where, data in places.items():
            assert secret.encode() not in data, f"the {what} appears in {where}"
    # botocore's DEBUG wire log would carry the key id (Authorization: Credential=...): the mirror keeps it at INFO
    for where, data in places.items():
        assert access_key.encode() not in data, f"the S3 access key id appears in {where}"
    assert not [r for r in caplog.records if r.name.startswith(("botocore", "urllib3")) and r.levelno < logging.INFO]
    print(
        f"searched {len(places)} places ({len(reader.received())} MQTT messages, {len(objects)} S3 objects, "
        f"{len(caplog.records)} log records) for {len(secrets)} secrets: none found"
    )


def _walk(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, (*path, str(key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, (*path, str(i)))
    else:
        yield path, node


@pytest.mark.parametrize("path", sorted(REPO.glob("configs/**/*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_name_secrets_but_never_hold_them(path):
    data = yaml.safe_load(path.read_text())
    named = 0
    for keys, value in _walk(data):
        key = keys[-1] if keys else ""
        if not SECRET_KEY.search(key):
            continue
        where = f"{path.name}: {'.'.join(keys)}"
        if key.endswith("_env"):
            assert value is None or ENV_NAME.match(str(value)), f"{where} must name an environment variable"
        elif key.endswith("_credential"):
            assert value is None or CREDENTIAL_NAME.match(str(value)), f"{where} must name a systemd credential"
        elif key.endswith("_hash"):  # a salted PBKDF2 verifier (the review page's demo users), not a secret
            assert PBKDF2.match(str(value)), f"{where} is not a PBKDF2 hash"
        else:
            pytest.fail(f"{where} holds a secret value; use *_env or *_credential")
        named += 1
    for number, line in enumerate(path.read_text().splitlines(), 1):
        code = line.split("#", 1)[0]
        hit = re.search(r"\b(password|secret_key|secret_access_key|aws_secret\w*|token)\s*:", code, re.IGNORECASE)
        assert hit is None, f"{path.name}:{number}: {line.strip()}"
    if path.name == "agent.example.yaml":
        assert named >= 3  # the MQTT password, the S3 access key and secret key are named

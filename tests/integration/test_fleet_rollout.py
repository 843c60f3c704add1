"""Fleet roll-out through S3 (moto's server): a version published once is fetched, verified and swapped in by
the running agent; a corrupt one is refused and the running version goes on."""

from __future__ import annotations

import logging
import os
import shutil

import boto3

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.fleet import publish_bundle
from tests.harness import variant, wait_until
from tests.services import moto_s3  # noqa: F401

PREFIX = "bundles/cam1/"


def test_published_version_is_fetched_and_swapped_in(tmp_path, bottle_bundle, moto_s3, monkeypatch, caplog):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    s3 = boto3.client("s3", endpoint_url=moto_s3.endpoint_url, region_name="us-east-1")
    s3.create_bucket(Bucket="lw-fleet")
    local = tmp_path / "bundles"
    local.mkdir()
    shutil.copytree(bottle_bundle, local / "v1")
    (local / "current").symlink_to("v1")
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    cfg = AgentConfig.model_validate(
        {
            "agent": {"name": "fleet1", "data_dir": str(tmp_path / "data"), "bundle_poll_seconds": 0.2},
            "database": {"url": f"sqlite:///{tmp_path / 'agent.db'}"},
            "cameras": [
                {
                    "id": "cam1",
                    "bundle": str(local / "current"),
                    "bundle_s3_prefix": PREFIX,
                    "source": {"type": "folder", "path": str(incoming)},
                }
            ],
            "s3": {"enabled": False, "bucket": "lw-fleet", "endpoint_url": moto_s3.endpoint_url},
            "metrics": {"enabled": False},
        }
    )
    agent = Agent(cfg)
    v1 = agent.cameras[0].pipeline.active.version
    agent.start()
    try:
        staged = tmp_path / "publish"
        staged.mkdir()
        assert publish_bundle(s3, "lw-fleet", PREFIX, variant(bottle_bundle, staged / "v2", "2")) == "2"
        wait_until(lambda: agent.cameras[0].pipeline.active.version == "2", 20, "version 2 from S3")
        assert os.readlink(local / "current") == "2" and (local / "2" / "manifest.json").is_file()

        corrupt = variant(bottle_bundle, staged / "v3", "3")
        publish_bundle(s3, "lw-fleet", PREFIX, corrupt, activate=False)  # verified here, damaged in the bucket
        blob = bytearray(s3.get_object(Bucket="lw-fleet", Key=f"{PREFIX}3/scorer.tflite")["Body"].read())
        blob[len(blob) // 2] ^= 0xFF
        s3.put_object(Bucket="lw-fleet", Key=f"{PREFIX}3/scorer.tflite", Body=bytes(blob))
        with caplog.at_level(logging.ERROR, logger="edge_agent.fleet"):
            s3.put_object(Bucket="lw-fleet", Key=f"{PREFIX}current", Body=b"3")
            wait_until(lambda: "bundle 3 from s3://lw-fleet/bundles/cam1/ refused" in caplog.text, 20, "refusal")
        assert "SHA-256 of scorer.tflite" in caplog.text
        assert os.readlink(local / "current") == "2" and not (local / "3").exists()
        assert agent.cameras[0].pipeline.active.version == "2" != v1
    finally:
        agent.stop()

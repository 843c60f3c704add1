"""The loop closed on real bottle images: a new batch of good parts (under dimmer light) alarms; the review page's
data marks those alarms false; ``update`` builds version 2; the agent swaps to it while frames keep arriving;
afterwards the same kind of frames score below the threshold, and no frame is lost or scored twice.

Real parts: the bottle int8 bundle, the agent (folder camera, SQLite), mosquitto, S3 through moto's server, the
review database on a real PostgreSQL server filled by ``sync-s3``, the review export and ``linewatch-train
update``. Then a version 3 whose scorer does not match its manifest's hash is refused, and version 2 goes on.
Prints the figures of the closing note: time from feedback to version 2 running, frames/s before and during the
swap, test-split image AUROC before and after.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path

import cv2
import numpy as np

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from review.auth import User
from review.config import S3Source
from review.db import QueueFilter, ReviewStore
from review.s3_source import sync_from_s3
from tests.harness import Subscriber, wait_until
from tests.services import mosquitto, moto_s3, pg_url, postgres  # noqa: F401
from training.cli import main as train_main

DIM = 0.85


def drop(incoming: Path, name: str, image: np.ndarray) -> None:
    """Write the frame beside the camera folder, then move it in: it appears complete."""
    staging = incoming.parent / "staging" / name
    staging.parent.mkdir(exist_ok=True)
    cv2.imwrite(str(staging), image)
    staging.rename(incoming / name)


def rows(db: Path) -> list[tuple[str, str, int]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT frame_id, model_version, anomalous FROM verdicts ORDER BY id").fetchall()


def test_feedback_becomes_version_2_on_the_running_agent(
    tmp_path, bottle_bundle, bottle_config, datasets_root, mosquitto, moto_s3, pg_url, monkeypatch, capsys, caplog
):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    test = datasets_root / "mvtec_ad" / "bottle" / "test"
    goods = [cv2.imread(str(p)) for p in sorted(test.glob("good/*.png"))]
    dim = [np.clip(g.astype(np.float32) * DIM, 0, 255).astype(np.uint8) for g in goods]
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    shutil.copytree(bottle_bundle, bundles / "v1")
    (bundles / "current").symlink_to("v1")
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    db = tmp_path / "agent.db"
    cfg = AgentConfig.model_validate(
        {
            "agent": {"name": "line7", "data_dir": str(tmp_path / "data"), "bundle_poll_seconds": 0.2},
            "database": {"url": f"sqlite:///{db}"},
            "cameras": [
                {
                    "id": "cam1",
                    "bundle": str(bundles / "current"),
                    "source": {"type": "folder", "path": str(incoming), "stable_seconds": 0.05},
                }
            ],
            "mqtt": {"enabled": True, "host": mosquitto.host, "port": mosquitto.port, "prefix": "lw"},
            "s3": {"enabled": True, "bucket": "lw-loop", "endpoint_url": moto_s3.endpoint_url, "batch_seconds": 1},
            "metrics": {"enabled": False},
        }
    )
    models = Subscriber(mosquitto.host, mosquitto.port, "lw/line7/cameras/cam1/model")
    agent = Agent(cfg)
    v1 = agent.cameras[0].pipeline.active.version
    agent.start()
    try:
        # 0. the usual parts: 5 to warm up, then 20 at once for the throughput before any swap
        for i in range(5):
            drop(incoming, f"w{i:02d}.png", goods[i])
        wait_until(lambda: len(rows(db)) == 5, 60, "the warm-up frames")
        started = time.monotonic()
        for i in range(20):
            drop(incoming, f"n{i:02d}.png", goods[i])
        wait_until(lambda: len(rows(db)) == 25, 60, "the usual frames")
        fps_before = 20 / (time.monotonic() - started)
        # 1. the new batch arrives: its good parts alarm under version 1
        for i in range(10):
            drop(incoming, f"a{i:02d}_dim.png", dim[i])
        wait_until(lambda: len(rows(db)) == 35, 60, "the first frames of the new batch")
        assert sum(a for f, _, a in rows(db) if f.startswith("a")) >= 8
        wait_until(lambda: agent.store.queue_depths()["s3"] == 0, 30, "the S3 mirror")

        # 2. the review page's data (PostgreSQL): synced from S3, the alarms marked false alarm
        review = ReviewStore(pg_url)
        source = S3Source(bucket="lw-loop", endpoint_url=moto_s3.endpoint_url, cache_dir=tmp_path / "cache")
        assert sync_from_s3(source, review).errors == 0
        feedback_at = time.monotonic()
        for row in review.queue(QueueFilter(anomalous_only=True)):
            review.add_feedback(User("rita", "reviewer"), row.id, "false_alarm")
        review.close()

        # 3. version 2 from that feedback, rolled out while frames keep arriving
        out = bundles / "v2"
        args = ["update", "--config", str(bottle_config), "--bundle", str(bundles / "current")]
        assert train_main([*args, "--feedback", pg_url, "--out", str(out)]) == 0
        report = json.loads(capsys.readouterr().out)
        # frames of the new batch the reviewer never saw, 20 at once, and the roll-out right after them
        started = time.monotonic()
        for i in range(20):
            drop(incoming, f"b{i:02d}_dim.png", dim[(10 + i) % len(dim)])
        tmp_link = bundles / "current.new"
        tmp_link.symlink_to("v2")
        os.replace(tmp_link, bundles / "current")
        wait_until(lambda: agent.cameras[0].pipeline.active.version != v1, 30, "version 2")
        running_at = time.monotonic()
        wait_until(lambda: len(rows(db)) == 55, 60, "every frame")
        fps_during = 20 / (time.monotonic() - started)

        # 4. a version 3 whose scorer does not match its manifest: refused, version 2 goes on
        shutil.copytree(out, bundles / "v3")
        with (bundles / "v3" / "scorer.tflite").open("ab") as fh:
            fh.write(b"tampered")
        with caplog.at_level(logging.ERROR, logger="edge_agent.rollout"):
            tmp_link.symlink_to("v3")
            os.replace(tmp_link, bundles / "current")
            wait_until(lambda: "refused" in caplog.text, 10, "the refusal of version 3")
        assert "SHA-256 of scorer.tflite" in caplog.text and "the running one goes on" in caplog.text
        for i in range(5):
            drop(incoming, f"c{i:02d}.png", goods[i])
        wait_until(lambda: len(rows(db)) == 60, 60, "frames after the refusal")
    finally:
        agent.stop()
    scored = rows(db)
    names = [f"w{i:02d}.png" for i in range(5)] + [f"n{i:02d}.png" for i in range(20)]
    names += [f"a{i:02d}_dim.png" for i in range(10)]
    names += [f"b{i:02d}_dim.png" for i in range(20)] + [f"c{i:02d}.png" for i in range(5)]
    assert sorted(f for f, _, _ in scored) == sorted(names)  # once each
    versions = [v for _, v, _ in scored]
    v2 = versions[-1]
    assert versions[0] == v1 and v2 != v1 and set(versions) == {v1, v2}
    assert versions == sorted(versions, key=lambda v: v == v2)  # every version-1 verdict before the first of 2
    after_swap = [a for _, v, a in scored if v == v2]
    assert len(after_swap) >= 10 and sum(after_swap) <= 1  # the new batch is normal for version 2
    assert any(json.loads(m.payload)["version"] == v2 for m in models.received())
    models.close()
    assert report["test_auroc_after"] >= report["test_auroc_before"] - 0.01
    new_batch_v1 = [a for f, v, a in scored if v != v2 and f.endswith("_dim.png")]
    print(
        f"loop: feedback to version 2 running {running_at - feedback_at:.1f} s (update {report['seconds']} s); "
        f"frames/s {fps_before:.1f} before, {fps_during:.1f} with the swap; new-batch alarms "
        f"{sum(new_batch_v1)}/{len(new_batch_v1)} under version 1, {sum(after_swap)}/{len(after_swap)} under 2; "
        f"test AUROC {report['test_auroc_before']:.4f} -> {report['test_auroc_after']:.4f}"
    )

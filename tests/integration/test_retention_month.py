"""A simulated month beside the line on a real small tmpfs: retention keeps the agent under its quota, and nothing
undelivered is lost.

Everything lives on one 40 MiB tmpfs: the camera folder (and its done/), heatmaps, image copies and the SQLite
database. The clock is injected: each simulated day the camera writes 20 real bottle frames (downscaled to 400 px,
one defective) stamped with that day, the agent scores them, and its background retention pass runs. S3 is down
for the whole month (its outbox grows: every anomalous frame's objects and the batches of normal verdicts); MQTT
is up, so delivered alert rows age out. What the month writes is several times the tmpfs; the quota holds after
every day's pass, the disk never gets near full, and when S3 comes back every anomalous frame's JSON, heatmap
and image arrive, and every normal verdict is in exactly one batch.
"""

from __future__ import annotations

import gzip
import json
import os
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import cv2
import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.bundle import load_bundle
from edge_agent.config import AgentConfig
from edge_agent.inspector import Inspector
from tests.harness import small_fs, wait_until
from tests.services import mosquitto, moto_s3  # noqa: F401

DAYS, PER_DAY, SIZE = 30, 20, 400
DISK_KB = 40 * 1024
QUOTA_MB = 12.0
START = datetime(2026, 1, 1, tzinfo=UTC)


class SimClock:
    """The agent's clock: jumped by the test a day at a time, running at real speed in between (so retries fall due)."""

    def __init__(self, start: datetime) -> None:
        self.set(start)

    def set(self, when: datetime) -> None:
        self._base, self._anchor = when, time.monotonic()

    def __call__(self) -> datetime:
        return self._base + timedelta(seconds=time.monotonic() - self._anchor)


def downscaled(datasets_root: Path, bundle: Path) -> tuple[list[bytes], list[bytes]]:
    """PNG bytes of bottle frames at ``SIZE`` px: 10 good ones the bundle passes (so that a day holds one anomalous
    frame, whatever the session's model makes of the odd good part) and 10 broken_large ones."""
    inspector = Inspector(load_bundle(bundle), threads=1)

    def encode(path: Path) -> bytes:
        image = cv2.resize(cv2.imread(str(path)), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        return cv2.imencode(".png", image)[1].tobytes()

    def passes(body: bytes) -> bool:
        image = cv2.cvtColor(cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        return not inspector.inspect(image).anomalous

    test = datasets_root / "mvtec_ad" / "bottle" / "test"
    good = [body for body in map(encode, sorted(test.glob("good/*.png"))) if passes(body)][:10]
    bad = [encode(p) for p in sorted(test.glob("broken_large/*.png"))[:10]]
    assert len(good) == 10
    return good, bad


def disk_usage(roots: list[Path]) -> int:
    """Bytes the files under ``roots`` take on disk."""
    return sum(
        os.lstat(os.path.join(d, n)).st_blocks * 512
        for root in roots
        if root.exists()
        for d, _, names in os.walk(root)
        for n in names
    )


def used_bytes(mount: Path) -> int:
    st = os.statvfs(mount)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def test_a_month_under_quota_with_s3_down(tmp_path, bottle_bundle, datasets_root, mosquitto, moto_s3, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    good, bad = downscaled(datasets_root, bottle_bundle)
    with small_fs(tmp_path / "disk", DISK_KB) as disk:
        if disk is None:
            pytest.skip("this process may not mount a tmpfs (needs root)")
        incoming, data = disk / "incoming", disk / "data"
        incoming.mkdir()
        cfg = AgentConfig.model_validate(
            {
                "agent": {"name": "month", "data_dir": str(data), "min_free_mb": 1},
                "database": {"url": f"sqlite:///{disk / 'agent.db'}"},
                "cameras": [
                    {
                        "id": "cam1",
                        "bundle": str(bottle_bundle),
                        "save_heatmaps": "all",
                        "source": {"type": "folder", "path": str(incoming), "stable_seconds": 0.05},
                    }
                ],
                "mqtt": {"enabled": True, "host": mosquitto.host, "port": mosquitto.port, "prefix": "lw"},
                "s3": {"enabled": True, "bucket": "lw-month", "endpoint_url": moto_s3.endpoint_url, "batch_seconds": 1},
                "delivery": {"retry_min_seconds": 0.2, "retry_max_seconds": 1.0},
                "retention": {
                    "interval_seconds": 0.1,
                    "files_max_age_days": 7,
                    "files_max_mb": QUOTA_MB,
                    "verdicts_max_age_days": 14,
                    "outbox_max_age_days": 3,
                },
                "metrics": {"enabled": False},
            }
        )
        clock = SimClock(START)
        verdicts = []
        moto_s3.stop()  # S3 is down for the whole month
        agent = Agent(cfg, on_verdict=verdicts.append, clock=clock)
        roots = agent.retention.roots
        written = 0
        peak_used = 0
        agent.start()
        try:
            for day in range(DAYS):
                clock.set(START + timedelta(days=day + 1))
                for i in range(PER_DAY):
                    body = bad[day % len(bad)] if i == 0 else good[(day + i) % len(good)]
                    stamp = (START + timedelta(days=day, minutes=40 * i)).timestamp()
                    part = incoming / f"d{day:02d}-{i:02d}.png.part"
                    part.write_bytes(body)
                    os.utime(part, (stamp, stamp))
                    part.rename(part.with_suffix(""))  # a complete file appears at once
                    written += len(body)
                expected = (day + 1) * PER_DAY
                wait_until(lambda n=expected: len(verdicts) >= n, 120, f"day {day} scored")
                passes = agent.retention.passes
                wait_until(lambda p=passes: agent.retention.passes >= p + 2, 30, f"day {day} retention")
                peak_used = max(peak_used, used_bytes(disk))
                usage = disk_usage(roots)
                assert usage <= QUOTA_MB * 2**20, f"day {day}: {usage / 2**20:.1f} MB of evidence over the quota"
            assert len(verdicts) == DAYS * PER_DAY
            assert all(p.space.skipped == 0 for p in agent.cameras[0].pipelines)  # evidence never skipped
            with sqlite3.connect(disk / "agent.db") as db:
                kept = db.execute("SELECT count(*) FROM verdicts").fetchone()[0]
                delivered = db.execute("SELECT count(*) FROM outbox WHERE status = 'delivered'").fetchone()[0]
            moto_s3.start()  # S3 is back
            wait_until(lambda: agent.store.queue_depths()["s3"] == 0, 120, "the S3 backlog to drain")
        finally:
            agent.stop()
            if not moto_s3.ready():
                moto_s3.start()

    print(
        f"month: {len(verdicts)} frames, camera wrote {written / 2**20:.1f} MiB on a {DISK_KB / 1024:.0f} MiB tmpfs, "
        f"peak use {peak_used / 2**20:.1f} MiB, quota {QUOTA_MB} MB; {kept} verdict rows kept, "
        f"{delivered} delivered outbox rows kept; {sum(v.anomalous for v in verdicts)} anomalous"
    )
    # the camera alone wrote more than twice the disk; the disk never came near full
    assert written > 2 * DISK_KB * 1024
    assert peak_used < 0.8 * DISK_KB * 1024, f"peak use {peak_used / 2**20:.1f} MiB of {DISK_KB / 1024:.0f}"
    # old rows went: verdicts older than 14 days unless still undelivered, delivered alert rows older than 3 days
    anomalous = [v for v in verdicts if v.anomalous]
    assert len(anomalous) >= DAYS  # at least the defective frame of each day
    assert kept <= 15 * PER_DAY + len(anomalous)
    recent = [v for v in anomalous if v.processed_at >= clock() - timedelta(days=4)]
    assert 0 < delivered <= len(recent)
    # nothing undelivered was deleted: every anomalous frame's three objects arrived after a month in the outbox
    s3 = boto3.client("s3", endpoint_url=moto_s3.endpoint_url, region_name="us-east-1")
    keys = {
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="lw-month")
        for o in page.get("Contents", [])
    }
    for v in anomalous:
        stem = f"month/cam1/{v.captured_at:%Y/%m/%d}/{v.frame_id}"
        assert {f"{stem}.json", f"{stem}.heatmap.png", f"{stem}.png"} <= keys, v.frame_id
    lines = [
        json.loads(line)
        for key in keys
        if key.endswith(".jsonl.gz")
        for line in gzip.decompress(s3.get_object(Bucket="lw-month", Key=key)["Body"].read()).splitlines()
    ]
    normal = sorted(f"month:cam1:{v.frame_id}" for v in verdicts if not v.anomalous)
    assert sorted(line["message_id"] for line in lines) == normal  # each normal verdict in exactly one batch

"""Reading the agents' S3 mirror (real moto S3 server): records, heatmaps and originals copied for review."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from edge_agent.config import S3Config
from edge_agent.delivery.s3 import S3Mirror
from edge_agent.pipeline import Outputs
from edge_agent.store import Store
from review.auth import User
from review.config import S3Source
from review.db import QueueFilter, ReviewStore
from review.s3_source import cache_path, sync_from_s3
from tests.review.factory import alarm_media, record
from tests.services import moto_s3  # noqa: F401


def test_sync_copies_the_mirror_once_and_feedback_works_on_the_copy(tmp_path, moto_s3, fixture_images, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    mirror = S3Mirror(
        S3Config(enabled=True, bucket="lw-review", prefix="plant/", endpoint_url=moto_s3.endpoint_url), "line1"
    )
    outputs = Outputs("line1", None, mirror.key_for, batch_key=mirror.batch_key)  # the agent's default mode
    agent = Store(f"sqlite:///{tmp_path / 'agent.db'}")
    image, heatmap = alarm_media(fixture_images / "bottle_broken_large_000.png", tmp_path / "edge")
    now = datetime.now(UTC)
    alarm = record("cam1", "in/broken_large_000.png", now, 20.0, defect_type="broken_large")
    alarm = replace(alarm, image_path=image, heatmap_path=heatmap)
    normal = [record("cam1", f"in/ok{i}.png", now - timedelta(seconds=5 + i), 6.0) for i in range(3)]
    for verdict in (alarm, *normal):
        agent.record(verdict, outputs.messages(verdict))
    assert agent.batch_normals("cam1", outputs.render_batch, 100) == 3  # one batch object for the normal ones
    for item in agent.pending("s3", 100):  # what the agent's delivery worker does
        outcome = mirror.upload(item)
        assert outcome, outcome.reason
    agent.close()

    source = S3Source(
        bucket="lw-review", prefix="plant/", endpoint_url=moto_s3.endpoint_url, cache_dir=tmp_path / "cache"
    )
    review = ReviewStore(f"sqlite:///{tmp_path / 'review.db'}")
    report = sync_from_s3(source, review)
    assert (report.listed, report.batches, report.added, report.errors) == (1, 1, 4, 0)
    (row,) = review.queue(QueueFilter())
    assert (row.frame_id, row.score, row.defect_type) == ("in/broken_large_000.png", 20.0, "broken_large")
    assert Path(row.heatmap_path).read_bytes() == Path(heatmap).read_bytes()
    assert Path(row.image_path).read_bytes() == Path(image).read_bytes()
    assert Path(row.image_path).is_relative_to(tmp_path / "cache" / "plant" / "line1" / "cam1")
    assert review.count(QueueFilter(anomalous_only=False)) == 4
    again = sync_from_s3(source, review)
    assert (again.added, again.known) == (0, 4)
    review.add_feedback(User("rita", "reviewer"), row.id, "defect", "broken_large")
    assert review.verdict(row.id).label == "defect"
    review.close()

    unreachable = S3Source(bucket="lw-review", endpoint_url="http://127.0.0.1:9", cache_dir=tmp_path / "c2")
    report = sync_from_s3(unreachable, ReviewStore(f"sqlite:///{tmp_path / 'other.db'}"))
    assert report.errors == 1 and report.added == 0


def test_cache_paths_stay_inside_the_cache(tmp_path):
    assert cache_path(tmp_path, "../../etc/passwd") == tmp_path / "etc" / "passwd"
    assert cache_path(tmp_path, "/abs/./x.png") == tmp_path / "abs" / "x.png"

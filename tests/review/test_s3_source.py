"""Reading the agents' S3 mirror (real moto S3 server): records, heatmaps and originals copied for review."""

from __future__ import annotations

import json
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
from review.stats import by_station
from tests.review.factory import alarm_media, record
from tests.services import moto_s3, pg_url, postgres  # noqa: F401


def _mirror_agent(name: str, bucket: str, endpoint: str, tmp: Path, fixture_images: Path) -> tuple[str, str]:
    """What agent ``name`` leaves in ``bucket``: one alarm with its images, three normal verdicts in a batch."""
    mirror = S3Mirror(S3Config(enabled=True, bucket=bucket, prefix="plant/", endpoint_url=endpoint), name)
    outputs = Outputs(name, None, mirror.key_for, batch_key=mirror.batch_key)  # the agent's default mode
    agent = Store(f"sqlite:///{tmp / f'{name}.db'}")
    image, heatmap = alarm_media(fixture_images / "bottle_broken_large_000.png", tmp / name)
    now = datetime.now(UTC)
    alarm = record("cam1", "in/broken_large_000.png", now, 20.0, defect_type="broken_large")
    alarm = replace(alarm, image_path=image, heatmap_path=heatmap, agent=name)
    normal = [record("cam1", f"in/ok{i}.png", now - timedelta(seconds=5 + i), 6.0) for i in range(3)]
    normal = [replace(v, agent=name) for v in normal]
    for verdict in (alarm, *normal):
        agent.record(verdict, outputs.messages(verdict))
    assert agent.batch_normals("cam1", outputs.render_batch, 100) == 3  # one batch object for the normal ones
    for item in agent.pending("s3", 100):  # what the agent's delivery worker does
        outcome = mirror.upload(item)
        assert outcome, outcome.reason
    agent.close()
    return image, heatmap


def test_sync_copies_the_mirror_once_and_feedback_works_on_the_copy(tmp_path, moto_s3, fixture_images, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    image, heatmap = _mirror_agent("line1", "lw-review", moto_s3.endpoint_url, tmp_path, fixture_images)

    source = S3Source(
        bucket="lw-review", prefix="plant/", endpoint_url=moto_s3.endpoint_url, cache_dir=tmp_path / "cache"
    )
    review = ReviewStore(f"sqlite:///{tmp_path / 'review.db'}")
    report = sync_from_s3(source, review)
    assert (report.listed, report.batches, report.added, report.errors) == (1, 1, 4, 0)
    (row,) = review.queue(QueueFilter())
    assert row.agent == "line1"
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


def test_a_fleet_in_one_postgresql_review(tmp_path, moto_s3, pg_url, fixture_images, monkeypatch):
    """Two lines, both with a ``cam1`` and the same file names, mirror into one bucket; one review holds both."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    for name in ("line-a", "line-b"):
        _mirror_agent(name, "lw-fleet", moto_s3.endpoint_url, tmp_path, fixture_images)
    client = S3Mirror(S3Config(enabled=True, bucket="lw-fleet", endpoint_url=moto_s3.endpoint_url), "x").client
    legacy = record("cam1", "old.png", datetime.now(UTC), 25.0)  # mirrored before records named their agent
    body = {k: v for k, v in legacy.to_json_dict().items() if k != "agent"}
    client.put_object(Bucket="lw-fleet", Key="plant/line-old/cam1/2026/01/01/old.png.json", Body=json.dumps(body))

    source = S3Source(
        bucket="lw-fleet", prefix="plant/", endpoint_url=moto_s3.endpoint_url, cache_dir=tmp_path / "cache"
    )
    review = ReviewStore(pg_url)
    try:
        report = sync_from_s3(source, review)
        assert (report.batches, report.added, report.errors) == (2, 9, 0)
        assert review.agents() == ["line-a", "line-b", "line-old"]
        assert review.cameras() == ["cam1"] and review.cameras(("line-b",)) == ["cam1"]
        alarms = {r.agent: r for r in review.queue(QueueFilter())}
        assert set(alarms) == {"line-a", "line-b", "line-old"}
        assert Path(alarms["line-b"].image_path).is_relative_to(tmp_path / "cache" / "plant" / "line-b" / "cam1")
        assert [r.agent for r in review.queue(QueueFilter(agents=("line-a",)))] == ["line-a"]
        assert review.count(QueueFilter(agents=("line-b",), anomalous_only=False)) == 4
        in_use = review.models_in_use()
        assert list(zip(in_use["agent"], in_use["camera"], strict=True)) == [
            ("line-a", "cam1"),
            ("line-b", "cam1"),
            ("line-old", "cam1"),
        ]
        review.add_feedback(User("rita", "reviewer"), alarms["line-a"].id, "false_alarm")
        assert review.verdict(alarms["line-b"].id).label is None  # the other line's frame of the same name
        frame = by_station(review.frame(agents=("line-a", "line-b")))
        assert sorted(frame["camera"].unique()) == ["line-a/cam1", "line-b/cam1"]
        assert sync_from_s3(source, review).added == 0
    finally:
        review.close()

"""Fault and load suite (``make soak``): real frames through a folder camera and a stream camera at once while
the broker restarts, S3 is unreachable for a stretch and the agent is SIGKILLed at random moments.

Afterwards it checks, and prints, that every frame has exactly one verdict, every anomalous verdict exactly one
alert (after de-duplication by message id: MQTT QoS 1 is at-least-once) and its S3 objects, no file is left, and
the database passes ``PRAGMA integrity_check``. Then a burst: 2,000 files dropped at once, peak memory reported.
Figures are printed, not asserted against the clock; the exit code is non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import sqlite3
import sys
import threading
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

import boto3
import yaml

from bench.services import moto_server
from bench.soak_parts import (
    AgentProcess,
    Broker,
    SwitchableLink,
    alert_receiver,
    corrupt_copy,
    drop_file,
    image_pool,
    verdict_count,
    write_video,
)
from edge_agent.delivery.s3 import BATCH_SUFFIX
from edge_agent.records import safe_name
from tests.harness import Subscriber, wait_until

AGENT = "soak"
BUCKET = "linewatch-soak"


def agent_config(work: Path, bundle: Path, broker: int, s3_url: str, video: Path | None) -> Path:
    """The agent's YAML: a folder camera, optionally a stream camera on ``video``, MQTT and S3 on."""
    cameras = [
        {
            "id": "folder-cam",
            "bundle": str(bundle),
            "workers": 2,  # two scoring threads share this camera's folder
            "source": {
                "type": "folder",
                "path": str(work / "incoming"),
                "after": "move",
                "done_dir": str(work / "done"),
                "quarantine_dir": str(work / "quarantine"),
                "stable_seconds": 0.2,
            },
        }
    ]
    if video is not None:
        source = {"type": "stream", "url": str(video), "stall_seconds": 5.0}
        cameras.append({"id": "stream-cam", "bundle": str(bundle), "source": source})
    cfg = {
        "agent": {"name": AGENT, "data_dir": str(work / "data"), "log_level": "WARNING", "threads": 1},
        "database": {"url": f"sqlite:///{work / 'agent.db'}"},
        "cameras": cameras,
        "mqtt": {"enabled": True, "port": broker, "prefix": "lw", "stats_interval_seconds": 10},
        "s3": {"enabled": True, "bucket": BUCKET, "endpoint_url": s3_url, "batch_seconds": 5},
        "delivery": {"retry_min_seconds": 0.5, "retry_max_seconds": 4.0},
        "metrics": {"enabled": False},
    }
    path = work / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


class Feeder(threading.Thread):
    """Drops ``total`` real images (and ``corrupt`` broken ones) into the camera folder, keeping a backlog."""

    def __init__(self, incoming: Path, pool: list, total: int, corrupt: int, backlog: int, seed: int) -> None:
        super().__init__(daemon=True)
        self.incoming, self.pool, self.total, self.corrupt, self.backlog = incoming, pool, total, corrupt, backlog
        self.rng = random.Random(seed)
        self.valid: set[str] = set()
        self.broken: set[str] = set()
        self.done = threading.Event()

    def run(self) -> None:
        """Feed every file, waiting while the folder holds ``backlog`` files."""
        corrupt_at = set(self.rng.sample(range(self.total + self.corrupt), self.corrupt))
        for i in range(self.total + self.corrupt):
            while sum(1 for _ in self.incoming.iterdir()) >= self.backlog:
                time.sleep(0.05)
            tag, src = self.pool[i % len(self.pool)]
            name = f"{i:05d}_{tag}_{src.name}"
            if i in corrupt_at:
                corrupt_copy(src, self.incoming, name, self.rng)
                self.broken.add(name)
            else:
                drop_file(src, self.incoming, name)
                self.valid.add(name)
        self.done.set()


def queues_empty(db: Path) -> bool:
    """True when no outbox row waits for delivery and every normal verdict is in a batch."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        pending = conn.execute("SELECT count(*) FROM outbox WHERE status = 'pending'").fetchone()[0]
        unbatched = conn.execute("SELECT count(*) FROM verdicts WHERE batch_id IS NULL AND NOT anomalous").fetchone()[0]
    return pending == 0 and unbatched == 0


def s3_contents(endpoint: str) -> tuple[list[str], list[str]]:
    """Every object key in the soak bucket, and the message ids in its batches (one per normal verdict line)."""
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        keys += [o["Key"] for o in page.get("Contents", [])]
    batched = [
        json.loads(line)["message_id"]
        for key in keys
        if key.endswith(BATCH_SUFFIX)
        for line in gzip.decompress(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()).splitlines()
    ]
    return keys, batched


def check(
    work: Path,
    expected: dict[str, set[str]],
    broken: set[str],
    receiver: Subscriber,
    s3: tuple[list[str], list[str]],
) -> tuple[list[str], list[str]]:
    """Compare what the agent stored and delivered with what was fed; returns (lines, failures)."""
    lines: list[str] = []
    failures: list[str] = []
    with closing(sqlite3.connect(work / "agent.db")) as db:
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        rows = db.execute("SELECT camera, frame_id, anomalous, heatmap_path, image_path FROM verdicts").fetchall()
        outbox = dict(db.execute("SELECT status, count(*) FROM outbox GROUP BY status").fetchall())
    lines.append(f"database integrity_check: {integrity}; outbox rows by status: {outbox}")
    failures += [] if integrity == "ok" else ["integrity_check failed"]
    failures += [f"{n} outbox rows not delivered" for s, n in outbox.items() if s != "delivered"]
    for camera, wanted in expected.items():
        got = [r[1] for r in rows if r[0] == camera]
        missing, extra, dupes = wanted - set(got), set(got) - wanted, len(got) - len(set(got))
        lines.append(
            f"{camera}: {len(wanted)} frames fed, {len(got)} verdicts, {len(missing)} missing, "
            f"{len(extra)} unexpected, {dupes} duplicates"
        )
        if missing or extra or dupes:
            failures.append(f"{camera}: verdicts do not match the frames fed")
    anomalous = {f"{AGENT}:{r[0]}:{r[1]}" for r in rows if r[2]}
    delivered = Counter(receiver.message_ids())
    lines.append(
        f"alerts: {len(anomalous)} anomalous verdicts, {len(delivered)} distinct alerts received, "
        f"{sum(delivered.values())} deliveries ({sum(n - 1 for n in delivered.values())} redelivered duplicates)"
    )
    if set(delivered) != anomalous:
        failures.append(f"alerts: {len(anomalous - set(delivered))} missing, {len(set(delivered) - anomalous)} extra")
    keys, batched = s3
    batches = [k for k in keys if k.endswith(BATCH_SUFFIX)]
    want_keys = {f"{safe_name(r[1])}.json" for r in rows if r[2]}
    want_keys |= {f"{safe_name(r[1])}.heatmap{Path(r[3]).suffix}" for r in rows if r[2] and r[3]}
    want_keys |= {f"{safe_name(r[1])}{Path(r[4]).suffix.lower()}" for r in rows if r[2] and r[4]}
    got_keys = [k.rsplit("/", 1)[1] for k in keys if not k.endswith(BATCH_SUFFIX)]
    lines.append(
        f"S3 anomaly objects: {len(want_keys)} expected, {len(got_keys)} stored, "
        f"{len(want_keys - set(got_keys))} missing, {len(got_keys) - len(set(got_keys))} duplicate names"
    )
    if want_keys != set(got_keys) or len(got_keys) != len(set(got_keys)):
        failures.append("S3 objects do not match the anomalous verdicts")
    normal = {f"{AGENT}:{r[0]}:{r[1]}" for r in rows if not r[2]}
    in_batches = Counter(batched)
    twice = sum(1 for n in in_batches.values() if n > 1)
    lines.append(
        f"S3 batches: {len(batches)} objects holding {len(batched)} normal verdicts of {len(normal)}; "
        f"{len(normal - set(in_batches))} missing, {len(set(in_batches) - normal)} unexpected, {twice} in two batches"
    )
    if set(in_batches) != normal or twice:
        failures.append("S3 batches do not hold every normal verdict exactly once")
    left = sorted(p.name for p in (work / "incoming").iterdir())
    quarantined = {p.name for p in (work / "quarantine").glob("*") if not p.name.endswith(".reason.txt")}
    lines.append(
        f"files: {len(left)} left in the camera folder, {len(quarantined)} quarantined ({len(broken)} broken files fed)"
    )
    if left or quarantined != broken:
        failures.append("files left behind or quarantine does not match the broken files")
    return lines, failures


def soak(args: argparse.Namespace, work: Path) -> list[str]:
    """The main run; returns failures."""
    rng = random.Random(args.seed)
    stream_frames = args.frames * args.stream_share // 100
    folder_frames = args.frames - stream_frames
    (work / "incoming").mkdir(parents=True)
    video = write_video(work / "line.avi", args.datasets, stream_frames) if stream_frames else None
    broker = Broker(work / "broker")
    broker.start()
    receiver = alert_receiver(broker.port, f"lw/{AGENT}/cameras/+/alerts")
    with moto_server() as s3_url:
        link = SwitchableLink(int(s3_url.rsplit(":", 1)[1]))
        link.up()
        config = agent_config(work, args.bundle, broker.port, f"http://127.0.0.1:{link.port}", video)
        agent = AgentProcess(config, work / "agent.log")
        pool = image_pool(args.datasets, args.seed)
        feeder = Feeder(work / "incoming", pool, folder_frames, args.corrupt, 400, args.seed)
        db, total = work / "agent.db", folder_frames + stream_frames
        # faults fire at random points of the progress, spread over the run
        kills = sorted(rng.uniform(0.03, 0.95) * total for _ in range(args.kills))
        restarts = sorted(rng.uniform(0.05, 0.9) * total for _ in range(args.broker_restarts))
        outage = (0.4 * total, 0.4 * total + args.s3_outage_frames)
        t0 = time.monotonic()
        agent.start()
        feeder.start()
        while kills or restarts or link.outages == 0 or not feeder.done.is_set():
            done = verdict_count(db)
            if kills and done >= kills[0]:
                kills.pop(0)
                time.sleep(rng.uniform(0.0, 1.0))
                agent.kill()
                agent.start()
            if restarts and done >= restarts[0]:
                restarts.pop(0)
                threading.Thread(target=broker.restart, args=(rng.uniform(1.0, 4.0),), daemon=True).start()
            if link.outages == 0 and done >= outage[0]:
                link.down()
                outage_started = time.monotonic()
            if link.outages == 1 and link._listener is None and done >= outage[1]:
                link.up()
                print(f"S3 was unreachable for {time.monotonic() - outage_started:.0f} s", flush=True)
            time.sleep(0.2)
        wait_until(lambda: verdict_count(db) >= total, 1800, "every frame to have a verdict")
        t_scored = time.monotonic() - t0
        wait_until(lambda: queues_empty(db), 600, "the outbox to drain")
        time.sleep(2.0)  # the last QoS 1 acknowledgements
        code = agent.terminate()
        receiver.close()
        s3_objects = s3_contents(s3_url)
    broker.stop()
    expected = {"folder-cam": feeder.valid}
    if video is not None:
        expected["stream-cam"] = {f"{video.name}#{i:07d}" for i in range(stream_frames)}
    lines, failures = check(work, expected, feeder.broken, receiver, s3_objects)
    print(f"\n## Soak: {total} real frames ({folder_frames} folder + {stream_frames} stream) + {args.corrupt} broken")
    print(f"- faults: {agent.starts - 1} SIGKILLs, {broker.restarts} broker restarts, {link.outages} S3 outage")
    print(
        f"- all frames scored after {t_scored:.0f} s ({total / t_scored:.1f} frames/s including restarts); "
        f"clean exit code {code}; agent peak RSS {agent.peak_rss_mb:.0f} MB"
    )
    for line in lines:
        print(f"- {line}")
    return failures + ([] if code == 0 else [f"agent exit code {code} on SIGTERM"])


def burst(args: argparse.Namespace, work: Path) -> list[str]:
    """2,000 files at once into a running agent's folder: peak memory and drain rate."""
    (work / "incoming").mkdir(parents=True)
    staging = work / "staging"
    staging.mkdir()
    pool = image_pool(args.datasets, args.seed)
    names = []
    for i in range(args.burst):
        tag, src = pool[i % len(pool)]
        names.append(f"{i:05d}_{tag}_{src.name}")
        shutil.copyfile(src, staging / names[-1])
    broker = Broker(work / "broker")
    broker.start()
    receiver = alert_receiver(broker.port, f"lw/{AGENT}/cameras/+/alerts")
    with moto_server() as s3_url:
        agent = AgentProcess(agent_config(work, args.bundle, broker.port, s3_url, None), work / "agent.log")
        agent.start()
        time.sleep(8.0)  # models loaded, idle
        idle_rss = agent.peak_rss_mb
        t0 = time.monotonic()
        for name in names:  # same file system: each rename is atomic and instant
            (staging / name).rename(work / "incoming" / name)
        wait_until(lambda: verdict_count(work / "agent.db") >= len(names), 1800, "the burst to be scored")
        seconds = time.monotonic() - t0
        wait_until(lambda: queues_empty(work / "agent.db"), 600, "the outbox to drain")
        time.sleep(2.0)
        agent.terminate()
        receiver.close()
        s3_objects = s3_contents(s3_url)
    broker.stop()
    lines, failures = check(work, {"folder-cam": set(names)}, set(), receiver, s3_objects)
    print(f"\n## Burst: {len(names)} files dropped at once")
    print(
        f"- scored in {seconds:.0f} s ({len(names) / seconds:.1f} frames/s); agent RSS idle {idle_rss:.0f} MB, "
        f"peak {agent.peak_rss_mb:.0f} MB (+{agent.peak_rss_mb - idle_rss:.0f} MB)"
    )
    for line in lines:
        print(f"- {line}")
    return failures


def main(argv: list[str] | None = None) -> int:
    """Run the soak and the burst; print figures; exit 1 when a check failed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, default=Path("bundles/demo-bottle"))
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--work", type=Path, default=Path("runs/soak"))
    parser.add_argument("--frames", type=int, default=10_000, help="real frames, folder and stream together")
    parser.add_argument("--stream-share", type=int, default=30, help="percent of the frames that come as video")
    parser.add_argument("--corrupt", type=int, default=50, help="broken files mixed into the folder")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--broker-restarts", type=int, default=5)
    parser.add_argument("--s3-outage-frames", type=int, default=1000, help="frames scored while S3 is down")
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "soak-access")  # moto accepts any key pair
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "soak-secret")
    shutil.rmtree(args.work, ignore_errors=True)
    failures = soak(args, args.work / "soak")
    if args.burst:
        failures += burst(args, args.work / "burst")
    for failure in failures:
        print(f"FAILED: {failure}")
    print("\nall checks passed" if not failures else f"\n{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

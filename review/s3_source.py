"""Reading verdicts from the agents' S3 mirror instead of their databases.

Every agent of a fleet may mirror into the same bucket and prefix: the first folder under the prefix names the
agent, and the review database keys verdicts by (agent, camera, frame). The agent mirrors each anomalous verdict
as ``<prefix><agent>/<camera>/<yyyy>/<mm>/<dd>/<frame>.json`` with ``<frame>.heatmap.png`` (the stored map, or a
drawn overlay; ``.jpg`` for JPEG overlays) and the original (``<frame><ext>``) beside it; normal verdicts come in
gzipped JSON-lines batches (``batch-<HHMMSS>-<hash>.jsonl.gz``, one record per line) in the same folders, or as
single ``.json`` records when the agent runs with ``normal_verdicts: each``. A sync copies new
records into the review's own database (``database.url``, created and migrated like the agent's) and the
images into ``cache_dir``, so the queue, statistics and feedback work the same for both sources. S3 itself
is only read.
"""

from __future__ import annotations

import gzip
import json
import logging
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import select

from edge_agent.delivery.s3 import BATCH_SUFFIX
from edge_agent.records import VerdictRecord
from edge_agent.secrets import read_secret, redact
from edge_agent.store import Verdict
from review.config import S3Source
from review.db import ReviewStore

log = logging.getLogger(__name__)

_RECORD_FIELDS = [f.name for f in fields(VerdictRecord)]


@dataclass
class SyncReport:
    """Outcome of one sync."""

    listed: int = 0
    batches: int = 0
    added: int = 0
    known: int = 0
    errors: int = 0


def s3_client(cfg: S3Source) -> Any:
    """A boto3 S3 client for the mirror: the agent's factory (same key sources, wire logs kept quiet)."""
    from edge_agent.delivery.s3 import s3_client as make_client

    return make_client(cfg)[0]


def parse_record(body: bytes, agent: str = "") -> VerdictRecord:
    """A verdict record from the JSON the agent mirrors (extra keys such as ``message_id`` are ignored).

    ``agent`` (from the object's key) fills in records written before verdicts named their agent.
    """
    data = json.loads(body)
    data.setdefault("agent", agent)
    values = {name: data[name] for name in _RECORD_FIELDS}
    for key in ("captured_at", "processed_at"):
        values[key] = datetime.fromisoformat(values[key])
    return VerdictRecord(**values)


def cache_path(cache_dir: Path, key: str) -> Path:
    """Where an object is kept locally: its key under ``cache_dir``, without any '..' or absolute part."""
    parts = [p for p in PurePosixPath(key).parts if p not in {"", ".", "..", "/"}]
    return cache_dir.joinpath(*parts)


def _download(client: Any, bucket: str, key: str, cache_dir: Path) -> str:
    target = cache_path(cache_dir, key)
    target.parent.mkdir(parents=True, exist_ok=True)
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    target.write_bytes(body)
    return str(target)


def agent_of(key: str, prefix: str) -> str:
    """The agent folder of an object key: ``<prefix><agent>/<camera>/...``."""
    return key[len(prefix) :].split("/", 1)[0] if key.startswith(prefix) else ""


def _list_keys(client: Any, cfg: S3Source) -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=cfg.bucket, Prefix=cfg.prefix):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return keys


def sync_from_s3(cfg: S3Source, store: ReviewStore, client: Any | None = None) -> SyncReport:
    """Copy records (and their heatmaps and originals) not yet in ``store``; errors are counted and logged."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = client or s3_client(cfg)
    secrets = [read_secret(cfg.access_key_env, None), read_secret(cfg.secret_key_env, cfg.secret_key_credential)]
    report = SyncReport()
    try:
        keys = _list_keys(client, cfg)
    except (BotoCoreError, ClientError) as err:
        log.warning("S3 listing of %s/%s failed: %s", cfg.bucket, cfg.prefix, redact(str(err), secrets))
        report.errors += 1
        return report
    present = set(keys)
    with store.engine.connect() as conn:
        known = {tuple(row) for row in conn.execute(select(Verdict.agent, Verdict.camera, Verdict.frame_id))}
    records = [k for k in keys if k.endswith(".json")][: cfg.max_objects]
    report.listed = len(records)
    for key in [k for k in keys if k.endswith(BATCH_SUFFIX)][: cfg.max_objects]:
        _sync_batch(client, cfg, key, store, known, report, secrets)
    for key in records:
        try:
            body = client.get_object(Bucket=cfg.bucket, Key=key)["Body"].read()
            record = parse_record(body, agent_of(key, cfg.prefix))
            if _identity(record) in known:
                report.known += 1  # known: nothing to download
                continue
            stem = key[: -len(".json")]
            heatmap_suffix = Path(record.heatmap_path).suffix.lower() if record.heatmap_path else ".png"
            heatmap_key = f"{stem}.heatmap{heatmap_suffix}"
            suffix = Path(record.image_path).suffix.lower() if record.image_path else ""
            image_key = f"{stem}{suffix or '.png'}"
            values = {name: getattr(record, name) for name in _RECORD_FIELDS}
            for field, key_ in (("heatmap_path", heatmap_key), ("image_path", image_key)):
                values[field] = _download(client, cfg.bucket, key_, cfg.cache_dir) if key_ in present else None
            _store_new(VerdictRecord(**values), store, known, report)
        except (BotoCoreError, ClientError, OSError, ValueError, KeyError, TypeError) as err:
            report.errors += 1
            log.warning("S3 record %s not copied: %s", key, redact(str(err), secrets))
    log.info("S3 sync of %s/%s: %s", cfg.bucket, cfg.prefix, report)
    return report


def _identity(record: VerdictRecord) -> tuple[str, str, str]:
    return record.agent, record.camera, record.frame_id


def _sync_batch(
    client: Any,
    cfg: S3Source,
    key: str,
    store: ReviewStore,
    known: set[tuple[Any, ...]],
    report: SyncReport,
    secrets: list[str | None],
) -> None:
    """Copy the normal verdicts of one batch object that are not in ``store`` yet (no images: they are normal)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        lines = gzip.decompress(client.get_object(Bucket=cfg.bucket, Key=key)["Body"].read()).splitlines()
    except (BotoCoreError, ClientError, OSError, EOFError) as err:
        report.errors += 1
        log.warning("S3 batch %s not read: %s", key, redact(str(err), secrets))
        return
    report.batches += 1
    for number, line in enumerate(lines, 1):
        try:
            record = parse_record(line, agent_of(key, cfg.prefix))
        except (ValueError, KeyError, TypeError) as err:
            report.errors += 1
            log.warning("S3 batch %s line %d skipped: %s", key, number, err)
            continue
        _store_new(record, store, known, report)


def _store_new(record: VerdictRecord, store: ReviewStore, known: set[tuple[Any, ...]], report: SyncReport) -> None:
    """Copy one record into the review database unless it is already there; counted in ``report``."""
    if _identity(record) in known:
        report.known += 1
        return
    _, created = store.store.record(record, [])
    report.added += int(created)
    known.add(_identity(record))

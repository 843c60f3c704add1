"""S3 mirror of verdict records and images (AWS, MinIO or any S3 API, via boto3).

Timeouts are short and botocore's own retries few: the outbox does the retrying, in order.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from edge_agent.config import S3Config, S3Connection
from edge_agent.delivery import DELIVERED, Delivery, DeliveryResult
from edge_agent.records import VerdictRecord, safe_name
from edge_agent.secrets import read_secret, redact
from edge_agent.store import OutboxItem

log = logging.getLogger(__name__)

WIRE_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")
BATCH_SUFFIX = ".jsonl.gz"


def quiet_wire_logs() -> None:
    """Keep boto's loggers at INFO or above: at DEBUG they log request headers (access key id, session token)."""
    for name in WIRE_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.INFO:
            logger.setLevel(logging.INFO)


def s3_client(cfg: S3Connection, connect_timeout: float = 3.0, read_timeout: float = 10.0) -> tuple[Any, list[str]]:
    """A boto3 S3 client for ``cfg`` and the secrets it was given (for redaction); wire logs quieted first.

    Keys from the environment or systemd credentials, else boto3's default chain (instance role, profile); path
    addressing for a custom endpoint (MinIO, test servers); two attempts per request, short timeouts; checksums only
    where the API requires them.
    """
    quiet_wire_logs()
    access_key = read_secret(cfg.access_key_env, None)
    secret_key = read_secret(cfg.secret_key_env, cfg.secret_key_credential)
    boto_cfg = BotoConfig(
        region_name=cfg.region,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"total_max_attempts": 2, "mode": "standard"},
        s3={"addressing_style": "path"} if cfg.endpoint_url else {},
        # CRC32 of every body only where the API requires one (botocore's default since 1.36 is every upload):
        # S3-compatible servers that predate those checksums refuse them, and a 40 kB heatmap's PUT took 1.91 ms
        # of the agent's CPU with them against 1.26 without (moto on loopback). Without a checksum header botocore
        # signs the body's SHA-256 instead (SigV4), so the server still refuses altered bytes.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    kwargs: dict[str, Any] = {"endpoint_url": cfg.endpoint_url, "config": boto_cfg}
    if access_key and secret_key:
        kwargs.update(aws_access_key_id=access_key, aws_secret_access_key=secret_key)
    client = boto3.session.Session().client("s3", **kwargs)
    return client, [s for s in (access_key, secret_key) if s]


class S3Mirror:
    """Uploads outbox rows (JSON payloads or local files) under ``<prefix><agent>/<camera>/<yyyy>/<mm>/<dd>/``."""

    name = "s3"

    def __init__(
        self, cfg: S3Config, agent_name: str, connect_timeout: float = 3.0, read_timeout: float = 10.0
    ) -> None:
        self.cfg = cfg
        self.agent = agent_name
        self.client, self._secrets = s3_client(cfg, connect_timeout, read_timeout)
        self._bucket_ready = False  # checked (and created if missing) before the first upload

    def key_for(self, camera: str, captured_at: datetime, frame_id: str, suffix: str) -> str:
        """Object key ``<prefix><agent>/<camera>/<yyyy>/<mm>/<dd>/<frame_id><suffix>`` (UTC date)."""
        day = captured_at.astimezone(UTC) if captured_at.tzinfo else captured_at
        return f"{self.cfg.prefix}{self.agent}/{camera}/{day:%Y/%m/%d}/{safe_name(frame_id)}{suffix}"

    def batch_key(self, first: VerdictRecord) -> str:
        """Key of a batch of normal verdicts: ``<day folder>/batch-<HHMMSS>-<hash of the first frame><BATCH_SUFFIX>``.

        Named by its first verdict (UTC processing time and a hash of the frame id), so a redelivered batch
        overwrites its own object and two batches never share a key.
        """
        day = first.processed_at.astimezone(UTC) if first.processed_at.tzinfo else first.processed_at
        digest = hashlib.sha256(f"{first.camera}\0{first.frame_id}".encode()).hexdigest()[:12]
        return f"{self.cfg.prefix}{self.agent}/{first.camera}/{day:%Y/%m/%d}/batch-{day:%H%M%S}-{digest}{BATCH_SUFFIX}"

    def ensure_bucket(self) -> bool:
        """Create the bucket when it does not exist; False (logged) when S3 cannot be reached or refuses."""
        self._bucket_ready = self._ensure_bucket()
        return self._bucket_ready

    def _ensure_bucket(self) -> bool:
        try:
            self.client.head_bucket(Bucket=self.cfg.bucket)
            return True
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            if code not in {"404", "NoSuchBucket", "NotFound"}:
                log.warning("S3 bucket %s not usable: %s", self.cfg.bucket, self._redact(err))
                return False
        except BotoCoreError as err:
            log.warning("S3 unreachable at %s: %s", self.cfg.endpoint_url or "AWS", self._redact(err))
            return False
        try:
            if self.cfg.region == "us-east-1":
                self.client.create_bucket(Bucket=self.cfg.bucket)
            else:
                self.client.create_bucket(
                    Bucket=self.cfg.bucket, CreateBucketConfiguration={"LocationConstraint": self.cfg.region}
                )
        except (ClientError, BotoCoreError) as err:
            log.warning("S3 bucket %s not created: %s", self.cfg.bucket, self._redact(err))
            return False
        log.info("S3 bucket %s created", self.cfg.bucket)
        return True

    def deliver(self, item: OutboxItem) -> Delivery:
        """Upload one outbox row; see :meth:`upload`."""
        return self.upload(item)

    def upload(self, item: OutboxItem) -> Delivery:
        """Put one row's payload or file; truthy only when stored. A missing local file gives ``DEAD``.

        The bucket is checked (and created when missing) before the first upload and after ``NoSuchBucket``.
        """
        try:
            body = self._body(item)
        except FileNotFoundError as err:
            return self._fail(item, DeliveryResult.DEAD, f"file {err.filename} is gone")
        except (IsADirectoryError, ValueError) as err:
            return self._fail(item, DeliveryResult.DEAD, str(err))
        except OSError as err:
            return self._fail(item, DeliveryResult.RETRY, f"cannot read {item.file_path}: {err.strerror}")
        if not self._bucket_ready and not self.ensure_bucket():
            return self._fail(item, DeliveryResult.RETRY, f"bucket {self.cfg.bucket} not available")
        try:
            self.client.put_object(
                Bucket=self.cfg.bucket,
                Key=item.key,
                Body=body,
                ContentType="application/gzip" if item.key.endswith(BATCH_SUFFIX) else item.content_type,
            )
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") == "NoSuchBucket":
                self._bucket_ready = False  # check (and create) it again before the next attempt
            return self._fail(item, DeliveryResult.RETRY, self._redact(err))
        except BotoCoreError as err:
            return self._fail(item, DeliveryResult.RETRY, self._redact(err))
        log.debug("S3 uploaded %s (%d bytes)", item.key, len(body))
        return DELIVERED

    def _fail(self, item: OutboxItem, result: DeliveryResult, reason: str) -> Delivery:
        dead = result is DeliveryResult.DEAD
        log.log(
            logging.ERROR if dead else logging.WARNING,
            "S3 upload of %s %s: %s",
            item.key,
            "abandoned" if dead else "failed",
            reason,
        )
        return Delivery(result, reason)

    @staticmethod
    def _body(item: OutboxItem) -> bytes:
        if item.payload is not None and item.key.endswith(BATCH_SUFFIX):
            return gzip.compress(item.payload.encode("utf-8"), mtime=0)  # same bytes on every attempt
        if item.payload is not None:
            return item.payload.encode("utf-8")
        if item.file_path:
            return Path(item.file_path).read_bytes()
        msg = "outbox row has neither payload nor file_path"
        raise ValueError(msg)

    def _redact(self, err: Exception) -> str:
        return redact(str(err), self._secrets)

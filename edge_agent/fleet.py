"""Fleet roll-out through S3: publish a bundle version once, every agent polling the prefix fetches and runs it.

Layout under a prefix (``cameras[].bundle_s3_prefix``)::

    <prefix><version>/manifest.json, scorer.tflite, ...   one folder per version (written first)
    <prefix>current                                       the version to run (written last: the switch)

An agent polls ``<prefix>current`` (one small GET, skipped when its ETag is unchanged). When it names a version
it does not have, the version's objects are downloaded beside the camera's ``bundle`` link into a staging folder,
verified (format, manifest, SHA-256 of every file), moved into place, and the link is swapped atomically; the
bundle watcher then loads, warms and swaps it in between two frames. A version that fails verification is
refused (logged once) and the running one goes on.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from edge_agent.bundle import MANIFEST, load_bundle
from edge_agent.errors import BundleError
from edge_agent.rollout import point_link

log = logging.getLogger(__name__)

POINTER = "current"
_VERSION = re.compile(r"^[A-Za-z0-9._+-]{1,128}$")


def publish_bundle(
    client: Any, bucket: str, prefix: str, folder: Path, version: str | None = None, activate: bool = True
) -> str:
    """Upload a verified bundle as ``<prefix><version>/``; with ``activate`` point ``<prefix>current`` at it."""
    bundle = load_bundle(folder)
    version = version or bundle.version
    if not _VERSION.match(version):
        raise BundleError(f"version {version!r}: use letters, digits and . _ + - only")
    for name in [*bundle.manifest.files, MANIFEST]:
        client.put_object(Bucket=bucket, Key=f"{prefix}{version}/{name}", Body=(folder / name).read_bytes())
    if activate:
        client.put_object(Bucket=bucket, Key=f"{prefix}{POINTER}", Body=version.encode("utf-8"))
    log.info("published bundle %s %s to s3://%s/%s%s/", bundle.name, version, bucket, prefix, version)
    return version


class S3BundleFetcher:
    """Brings the version named at ``<prefix>current`` next to a camera's bundle link and swaps the link."""

    def __init__(self, client: Any, bucket: str, prefix: str, link: Path, camera: str) -> None:
        if not link.is_symlink():
            msg = f"camera {camera}: bundle_s3_prefix needs `bundle` to be a link (e.g. .../current), {link} is not"
            raise BundleError(msg)
        self.client, self.bucket, self.prefix, self.link, self.camera = client, bucket, prefix, link, camera
        self._etag: str | None = None
        self._refused: str | None = None

    def check(self) -> bool:
        """Poll once; True when the link now points at a newly fetched version."""
        try:
            head = self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}{POINTER}")
        except (ClientError, BotoCoreError) as err:
            log.debug("camera=%s no bundle pointer at %s%s: %s", self.camera, self.prefix, POINTER, err)
            return False
        if head.get("ETag") == self._etag:
            return False
        version = head["Body"].read().decode("utf-8").strip()
        if not _VERSION.match(version) or version == self._refused:
            return False
        target = self.link.parent / version
        if os.path.realpath(self.link) == str(target.resolve()):
            self._etag = head.get("ETag")
            return False
        try:
            if not target.is_dir():
                self._fetch(version, target)
        except (BundleError, ClientError, BotoCoreError, OSError) as err:
            self._refused = version
            log.error(
                "camera=%s bundle %s from s3://%s/%s refused: %s", self.camera, version, self.bucket, self.prefix, err
            )
            return False
        point_link(self.link, version)
        self._etag = head.get("ETag")
        log.info("camera=%s fetched bundle %s from s3://%s/%s", self.camera, version, self.bucket, self.prefix)
        return True

    def _fetch(self, version: str, target: Path) -> None:
        staging = target.with_name(f".{version}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            folder = f"{self.prefix}{version}/"
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder)
            keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
            for key in keys:
                name = key[len(folder) :]
                if "/" in name or name in ("", ".", ".."):
                    continue  # a bundle is flat: anything else is not ours
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                (staging / name).write_bytes(body)
            load_bundle(staging)  # verify before it can ever be pointed at
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

"""Plain records passed between the pipeline, the store and the delivery workers."""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

Channel = Literal["mqtt", "s3"]

#: Characters never written into a file name or an S3 key.
UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(frame_id: str) -> str:
    """File-name- and S3-key-safe form of a frame id: ``[A-Za-z0-9._-]``, no leading '.' or '-', at most 189 characters.

    An id that had to change gets a short hash of itself (before a short extension), so two ids never share a file.

    Examples:
        >>> safe_name("img_0001.png"), safe_name("day1/x.png"), safe_name("-rf")
        ('img_0001.png', 'day1_x-700d61ba.png', 'rf-836830ee')
    """
    cleaned = UNSAFE_CHARS.sub("_", frame_id).strip("._-")[:180] or "frame"
    if cleaned == frame_id:
        return cleaned
    digest = hashlib.sha1(frame_id.encode("utf-8", "surrogatepass"), usedforsecurity=False).hexdigest()[:8]
    stem, dot, ext = cleaned.rpartition(".")
    return f"{stem}-{digest}.{ext}" if dot and stem and len(ext) <= 5 else f"{cleaned}-{digest}"


@dataclass(frozen=True)
class Frame:
    """One image from a source, before scoring. ``frame_id`` is unique per camera (file name or stream counter)."""

    camera: str
    source: str  # "folder" or "stream"
    frame_id: str
    captured_at: datetime  # timezone-aware UTC
    image_path: str | None = None  # folder sources: the file; stream sources: None
    #: The source knows that no verdict exists for this frame id: a file it checked (or that appeared after the
    #: agent started), a live frame named by its capture time. The pipeline then skips its own database look-up;
    #: a duplicate would still be refused by :meth:`edge_agent.store.Store.record`.
    is_new: bool = False


@dataclass(frozen=True)
class VerdictRecord:
    """One verdict row: everything the review page and the alerts need about one scored frame."""

    camera: str
    source: str
    frame_id: str
    captured_at: datetime
    processed_at: datetime
    model_name: str
    model_version: str
    model_hash: str
    score: float
    normalised_score: float
    threshold: float
    anomalous: bool
    defect_type: str | None
    type_confidence: float | None
    heatmap_path: str | None
    image_path: str | None
    latency_ms: float
    agent: str = ""  # the agent that scored the frame (one review database holds a fleet)

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-ready dict (datetimes as ISO 8601 strings)."""
        data = asdict(self)
        for key in ("captured_at", "processed_at"):
            data[key] = data[key].isoformat()
        return data


@dataclass(frozen=True)
class OutboxMessage:
    """A unit of delivery written with its verdict in one transaction, delivered later, in order.

    ``key`` is the idempotency key: the MQTT message id carried in the payload, or the S3 object key;
    a redelivery after a crash repeats the same key, so receivers can drop duplicates.
    For S3, ``payload`` is the JSON body, or ``file_path`` names a local file to upload.
    """

    channel: Channel
    key: str
    payload: str | None = None
    file_path: str | None = None
    content_type: str = "application/json"
    topic: str | None = None  # MQTT topic (mqtt channel only)

"""The edge agent's config tree (YAML, strict). Each component receives only its own section.

Secrets never live here: MQTT and S3 credentials come from environment variables or systemd credentials
(``$CREDENTIALS_DIRECTORY``), named by the ``*_env`` / ``*_credential`` fields.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, field_validator, model_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from edge_agent.config_base import StrictModel, load_yaml_config, repeated

_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")


def _host(value: str) -> str:
    """A DNS name or an IP address: no scheme, port, spaces or leading dash (messages never echo the value)."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOSTNAME.match(value):
            msg = "must be a host name or IP address, without scheme, port or spaces"
            raise ValueError(msg) from None
    return value


Host = Annotated[str, AfterValidator(_host)]


class FolderSourceConfig(StrictModel):
    """Watch a directory for new image files."""

    type: Literal["folder"] = "folder"
    path: Path = Field(description="directory the camera writes images into")
    recursive: bool = Field(default=False, description="also watch sub-directories")
    after: Literal["keep", "move", "delete"] = Field(default="move", description="what to do with a scored file")
    done_dir: Path | None = Field(default=None, description="where 'move' puts scored files (default <path>/done)")
    quarantine_dir: Path | None = Field(default=None, description="unreadable files (default <path>/quarantine)")
    stable_seconds: float = Field(
        default=0.5,
        ge=0.0,
        description="size must be unchanged this long before reading (a file closed after writing is read at once); "
        "0 reads a file as soon as it is seen, which is safe only for cameras that write elsewhere and rename "
        "into the folder: a file caught half-written is quarantined",
    )
    poll_seconds: float = Field(default=1.0, gt=0.0, description="rescan interval besides filesystem events")
    max_pending: int = Field(default=256, ge=1, description="back-pressure: files queued before pausing intake")


class StreamSourceConfig(StrictModel):
    """Any OpenCV VideoCapture source: RTSP/HTTP URL, video file or camera index."""

    type: Literal["stream"] = "stream"
    url: str = Field(description="rtsp://..., http://..., a video file path, or a camera index like '0'")
    max_fps: float | None = Field(default=None, gt=0.0, description="cap on frames scored per second")
    every_nth: int = Field(default=1, ge=1, description="score every Nth frame")
    stall_seconds: float = Field(default=10.0, gt=0.0, description="no frame this long = stalled, reconnect")
    reconnect_min_seconds: float = Field(default=1.0, gt=0.0, description="first reconnect delay")
    reconnect_max_seconds: float = Field(default=30.0, gt=0.0, description="longest reconnect delay (back-off cap)")
    loop: bool = Field(default=False, description="restart a video file at its end (demos)")


SourceConfig = Annotated[FolderSourceConfig | StreamSourceConfig, Field(discriminator="type")]


class CameraConfig(StrictModel):
    """One camera (folder or stream) with its own model bundle and thresholds."""

    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="camera id used in topics, keys and rows")
    source: SourceConfig
    bundle: Path = Field(description="model bundle folder produced by model_export")
    threshold: float | None = Field(default=None, description="override the bundle's fitted image threshold")
    save_heatmaps: Literal["anomalous", "all", "none"] = Field(default="anomalous", description="heatmaps to save")
    heatmap_format: Literal["map", "jpg", "png"] = Field(
        default="map",
        description="map: the anomaly map as a small grey PNG with its scale in it, drawn over the original by the "
        "review page (about 0.5 ms a frame); jpg/png: the overlay drawn on the frame by the agent (2-4 ms)",
    )
    heatmap_max_side: int = Field(
        default=1024,
        ge=64,
        description="longest side of a saved heatmap: a larger map is shrunk (area), and a larger frame before the "
        "overlay is drawn (the anomaly map is far coarser; the original is kept at full size)",
    )
    classify_all: bool = Field(default=False, description="run the defect-type classifier on normal frames too")
    workers: int = Field(
        default=1, ge=1, le=8, description="scoring threads, each with its own interpreters (2 = a frame per core)"
    )
    bundle_s3_prefix: str | None = Field(
        default=None,
        description="fleet roll-out: poll <s3.bucket>/<prefix>current (the version to run) and fetch "
        "<prefix><version>/ beside the camera's bundle link; needs `bundle` to be a link and the s3 section",
    )


class DatabaseConfig(StrictModel):
    """Where verdicts and the outbox live (any SQLAlchemy URL; SQLite by default)."""

    url: str = Field(default="sqlite:///data/linewatch.db", description="SQLAlchemy database URL")
    busy_timeout_ms: int = Field(default=5000, ge=0, description="SQLite busy timeout")

    @field_validator("url")
    @classmethod
    def _sqlalchemy_url(cls, value: str) -> str:
        try:
            url = make_url(value)
            url.get_dialect()  # a known backend (imports its dialect module, not the driver)
        except (ArgumentError, ValueError) as err:
            msg = "not a SQLAlchemy URL of a known backend (dialect[+driver]://user@host[:port]/db, sqlite:///path)"
            raise ValueError(msg) from err
        if url.port is not None and not 1 <= url.port <= 65535:
            msg = "port must be 1..65535"
            raise ValueError(msg)
        if url.password:
            msg = "must not hold a password: use the driver's environment or files (e.g. PGPASSWORD, ~/.pgpass)"
            raise ValueError(msg)
        return value


class TLSConfig(StrictModel):
    """TLS for the MQTT connection."""

    enabled: bool = False
    ca_file: Path | None = Field(default=None, description="CA bundle; system CAs when empty")
    cert_file: Path | None = Field(default=None, description="client certificate (mutual TLS)")
    key_file: Path | None = Field(default=None, description="client key (mutual TLS)")
    insecure: bool = Field(default=False, description="skip host name check (tests only)")


class MQTTConfig(StrictModel):
    """MQTT alerts, status and stats (paho-mqtt v2)."""

    enabled: bool = False
    host: Host = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    prefix: str = Field(default="linewatch", description="topic tree root: <prefix>/<agent>/...")
    client_id: str | None = Field(default=None, description="default linewatch-<agent name>")
    keepalive: int = Field(default=30, ge=5)
    qos: Literal[0, 1, 2] = Field(default=1, description="QoS of alert events")
    stats_interval_seconds: float = Field(default=60.0, gt=0.0)
    username_env: str | None = Field(default=None, description="environment variable holding the user name")
    password_env: str | None = Field(default=None, description="environment variable holding the password")
    password_credential: str | None = Field(default=None, description="systemd credential name of the password")
    tls: TLSConfig = Field(default_factory=TLSConfig)


class S3Connection(StrictModel):
    """Where an S3 bucket is and how to log in to it; shared by the agent's mirror and the review page's sync.

    Keys come from environment variables or systemd credentials, else boto3's default chain; never from YAML.
    """

    bucket: str = Field(default="linewatch", min_length=3, max_length=63)
    prefix: str = Field(default="", description="key prefix before <agent>/<yyyy>/<mm>/<dd>/...")
    endpoint_url: str | None = Field(default=None, description="http(s)://host:port for MinIO or a test server")
    region: str = "us-east-1"
    access_key_env: str | None = Field(default="AWS_ACCESS_KEY_ID", description="env var of the access key")
    secret_key_env: str | None = Field(default="AWS_SECRET_ACCESS_KEY", description="env var of the secret key")
    secret_key_credential: str | None = Field(default=None, description="systemd credential of the secret key")

    @field_validator("endpoint_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not value.startswith(("http://", "https://")):
            msg = "must start with http:// or https://"
            raise ValueError(msg)
        try:
            port = parts.port
        except ValueError:
            port = 0
        if not parts.hostname or port == 0 or parts.username or parts.password or parts.query or parts.fragment:
            msg = "must be http(s)://host[:port] with a port 1..65535 and no credentials, query or fragment"
            raise ValueError(msg)
        _host(parts.hostname)
        return value


class S3Config(S3Connection):
    """Mirror of verdict records and images to S3 (AWS, MinIO, any S3 API)."""

    enabled: bool = False
    upload_images: bool = Field(default=True, description="upload the original image of anomalous frames")
    normal_verdicts: Literal["batch", "each"] = Field(
        default="batch",
        description="batch: normal verdicts go into one gzipped JSON-lines object per camera per interval; "
        "each: one JSON object per frame (one PUT request per frame)",
    )
    batch_seconds: float = Field(default=60.0, ge=1.0, description="interval of the normal-verdict batches")


class DeliveryConfig(StrictModel):
    """Outbox delivery: retries with paced back-off, never blocking scoring."""

    retry_min_seconds: float = Field(default=1.0, gt=0.0)
    retry_max_seconds: float = Field(default=60.0, gt=0.0)
    batch_size: int = Field(default=50, ge=1)


class MetricsConfig(StrictModel):
    """Health and Prometheus metrics endpoint."""

    enabled: bool = True
    host: Host = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535, description="0 picks a free port")


class RetentionConfig(StrictModel):
    """What the agent deletes, oldest first, so that months beside the line fit the disk.

    Never deleted: an outbox row not yet delivered, a file such a row still points to, and verdicts (with their
    files) that a person reviewed. ``null`` switches a limit off.
    """

    enabled: bool = True
    interval_seconds: float = Field(default=300.0, gt=0.0, description="time between retention passes")
    files_max_age_days: float | None = Field(
        default=30.0, gt=0.0, description="heatmaps, image copies and done/ files older than this are deleted"
    )
    files_max_mb: float | None = Field(
        default=10_000.0, gt=0.0, description="disk for heatmaps, image copies and done/ files, all cameras"
    )
    verdicts_max_age_days: float | None = Field(default=90.0, gt=0.0, description="verdict rows older than this")
    outbox_max_age_days: float | None = Field(
        default=7.0, gt=0.0, description="delivered (or abandoned) outbox rows older than this"
    )
    batch_rows: int = Field(default=2000, ge=1, description="rows deleted per transaction (short write locks)")


class AgentSection(StrictModel):
    """Identity and local folders of this agent."""

    name: str = Field(default="line1", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="agent id in topics and keys")
    data_dir: Path = Field(default=Path("data"), description="heatmaps and other local files")
    threads: int = Field(default=2, ge=1, le=64, description="interpreter threads per model")
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    min_free_mb: int = Field(
        default=200, ge=0, description="below this free space in data_dir, heatmaps and image copies are skipped"
    )
    frame_timeout_seconds: float = Field(
        default=60.0, gt=0.0, description="a frame scored longer than this makes the agent unhealthy (hung call)"
    )
    bundle_poll_seconds: float | None = Field(
        default=5.0, gt=0.0, description="look for a new bundle behind each camera's bundle path (null: never)"
    )
    stream_silence_seconds: float = Field(
        default=120.0, gt=0.0, description="a stream camera silent this long makes the agent unhealthy"
    )


class AgentConfig(StrictModel):
    """Root of the agent's config file."""

    agent: AgentSection = Field(default_factory=AgentSection)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    cameras: list[CameraConfig] = Field(min_length=1)
    mqtt: MQTTConfig = Field(default_factory=MQTTConfig)
    s3: S3Config = Field(default_factory=S3Config)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)

    @model_validator(mode="after")
    def _unique_camera_ids(self) -> AgentConfig:
        duplicates = repeated([c.id for c in self.cameras])
        if duplicates:
            msg = f"camera ids must be unique, repeated: {duplicates}"
            raise ValueError(msg)
        return self


def load_agent_config(path: str | Path) -> AgentConfig:
    """Load and validate the agent's YAML; raise ConfigError naming the key path on failure."""
    return load_yaml_config(AgentConfig, path)

"""The review page's config tree (YAML, strict; errors name the key path).

Password hashes come from environment variables or systemd credentials (``password_hash_env`` /
``password_hash_credential``); an inline ``password_hash`` is accepted for local demos only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from edge_agent.config import DatabaseConfig, S3Connection
from edge_agent.config_base import StrictModel, load_yaml_config, repeated

Role = Literal["reviewer", "viewer"]
TimeRange = Literal["1h", "24h", "7d", "30d", "all"]


class DatabaseSource(StrictModel):
    """Read verdicts straight from ``database.url`` (the agent's own database)."""

    type: Literal["database"] = "database"


class S3Source(S3Connection):
    """Read verdicts from the agents' S3 mirror; records are copied into ``database.url``, images into cache_dir.

    Bucket, endpoint and keys as the agent's ``s3`` section (the same checks: no credentials in the endpoint).
    """

    type: Literal["s3"] = "s3"
    bucket: str = Field(min_length=3, max_length=63, description="bucket the agents mirror into")
    prefix: str = Field(default="", description="key prefix to read, e.g. 'plant-a/' or 'plant-a/line1/'")
    cache_dir: Path = Field(default=Path("data/review-cache"), description="downloaded images and heatmaps")
    max_objects: int = Field(default=20000, ge=1, description="records read per sync at most")


SourceSection = Annotated[DatabaseSource | S3Source, Field(discriminator="type")]


class UserConfig(StrictModel):
    """One person who may log in; exactly one of the three password hash fields is set."""

    name: str = Field(pattern=r"^[A-Za-z0-9._@-]{1,64}$", description="login name, stored with feedback")
    role: Role = Field(description="reviewer: may write feedback; viewer: read-only")
    password_hash_env: str | None = Field(default=None, description="environment variable holding the hash")
    password_hash_credential: str | None = Field(default=None, description="systemd credential holding the hash")
    password_hash: str | None = Field(default=None, description="inline hash (local demos only)", repr=False)

    @model_validator(mode="after")
    def _one_hash_source(self) -> UserConfig:
        given = [self.password_hash_env, self.password_hash_credential, self.password_hash]
        if sum(v is not None for v in given) != 1:
            msg = "set exactly one of password_hash_env, password_hash_credential, password_hash"
            raise ValueError(msg)
        if self.password_hash is not None and not self.password_hash.startswith("pbkdf2_sha256$"):
            msg = "password_hash must look like pbkdf2_sha256$iterations$salt_b64$hash_b64"
            raise ValueError(msg)
        return self


class QueueSection(StrictModel):
    """Review queue defaults."""

    page_size: int = Field(default=10, ge=1, le=100, description="verdicts shown per page")
    default_range: TimeRange = Field(default="7d", description="time range preselected: 1h, 24h, 7d, 30d or all")


class DriftSection(StrictModel):
    """Warning when the scores of frames judged normal drift (per camera and model).

    Recent window: the last ``recent_hours``; reference window: the ``reference_hours`` before it. A warning
    is raised when both windows hold at least ``min_samples`` normal frames and the two-sample KS statistic
    is at least ``ks_threshold`` or the median moved by at least ``median_shift`` reference spreads
    (spread = IQR / 1.349, a robust standard deviation).
    """

    recent_hours: float = Field(default=24.0, gt=0.0, description="recent window length")
    reference_hours: float = Field(default=24.0 * 7, gt=0.0, description="reference window before it")
    min_samples: int = Field(default=30, ge=5, description="normal frames needed in each window")
    ks_threshold: float = Field(default=0.3, gt=0.0, le=1.0, description="KS statistic that warns")
    median_shift: float = Field(default=1.0, gt=0.0, description="median shift (reference spreads) that warns")


class PathsSection(StrictModel):
    """Folders the page reads (and writes exports to)."""

    bundles_dir: Path = Field(default=Path("bundles"), description="model bundles: folders with manifest.json")
    runs_dir: Path | None = Field(default=Path("runs"), description="training runs (for their metrics.json)")
    examples_dir: Path | None = Field(default=None, description="optional <type>/<image> examples for the guide")
    export_dir: Path = Field(default=Path("data/review-exports"), description="labelled data set exports")
    media_root: Path = Field(default=Path("."), description="base of relative image/heatmap paths in verdicts")


class ReviewConfig(StrictModel):
    """Root of the review page's config file."""

    title: str = Field(default="linewatch review", description="page title")
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    source: SourceSection = Field(default_factory=DatabaseSource)
    paths: PathsSection = Field(default_factory=PathsSection)
    queue: QueueSection = Field(default_factory=QueueSection)
    drift: DriftSection = Field(default_factory=DriftSection)
    users: list[UserConfig] = Field(min_length=1, description="who may log in, with their role")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _unique_users(self) -> ReviewConfig:
        duplicates = repeated([u.name for u in self.users])
        if duplicates:
            msg = f"user names must be unique, repeated: {duplicates}"
            raise ValueError(msg)
        return self


def load_review_config(path: str | Path) -> ReviewConfig:
    """Load and validate the review YAML; raise ConfigError naming the key path on failure."""
    return load_yaml_config(ReviewConfig, path)

"""What every view of the page shares: the context (config, store, user), cached resources, small helpers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from edge_agent.bundle import load_bundle
from edge_agent.inspector import Inspector
from review.auth import Authenticator, User
from review.config import ReviewConfig, load_review_config
from review.db import ReviewStore
from review.export import resolve
from review.media import load_heatmap, load_rgb

#: time ranges by config name: (label, hours back or None for all time)
RANGES: dict[str, tuple[str, float | None]] = {
    "1h": ("last hour", 1.0),
    "24h": ("last 24 hours", 24.0),
    "7d": ("last 7 days", 24.0 * 7),
    "30d": ("last 30 days", 24.0 * 30),
    "all": ("all time", None),
}


@dataclass(frozen=True)
class Context:
    """Handed to each view: the validated config, the database and the logged-in user."""

    cfg: ReviewConfig
    store: ReviewStore
    user: User

    def media(self, path: str | None) -> np.ndarray | None:
        """An image or heatmap a verdict points at, as RGB (None when missing)."""
        return load_rgb(resolve(path, self.cfg.paths.media_root))

    def heatmap(self, path: str | None, original_rgb: np.ndarray | None) -> np.ndarray | None:
        """A verdict's heatmap as RGB: a stored map drawn over its original, or the overlay the agent drew."""
        return load_heatmap(resolve(path, self.cfg.paths.media_root), original_rgb)


@st.cache_resource(show_spinner=False)
def cached_config(path: str, mtime: float) -> ReviewConfig:
    """The config file, re-read when it changes."""
    return load_review_config(path)


@st.cache_resource(show_spinner=False)
def cached_store(url: str, busy_timeout_ms: int) -> ReviewStore:
    """One store (engine) per database for the whole server process."""
    return ReviewStore(url, busy_timeout_ms)


@st.cache_resource(show_spinner=False)
def cached_authenticator(path: str, mtime: float) -> Authenticator:
    """Users of a config file; hashes are read from the environment once per config version."""
    return Authenticator(list(cached_config(path, mtime).users))


@st.cache_resource(show_spinner=False, max_entries=4)
def cached_inspector(bundle_dir: str, manifest_mtime: float) -> Inspector:
    """A verified bundle's inspector (TFLite interpreters), kept while the manifest is unchanged."""
    return Inspector(load_bundle(bundle_dir), threads=2)


@st.cache_data(show_spinner=False, ttl=60)
def bundle_defect_types(bundles_dir: str) -> list[str]:
    """Defect types the bundles were trained on (manifests only; no hash check), for the type selectors."""
    found: set[str] = set()
    for manifest in sorted(Path(bundles_dir).glob("*/manifest.json")):
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        found.update(str(t) for t in data.get("data", {}).get("defect_types", []))
        classifier = data.get("models", {}).get("classifier", {})
        found.update(str(t) for t in classifier.get("class_names", []) if t != "good")
    return sorted(found)


def inspector_for(bundle_dir: Path) -> Inspector:
    """Cached inspector of a bundle folder."""
    return cached_inspector(str(bundle_dir), (bundle_dir / "manifest.json").stat().st_mtime)


def range_label(code: str) -> str:
    """Label of a time range code (``format_func`` of the range selectors)."""
    return RANGES[code][0] if code in RANGES else code


def since_for(code: str, now: datetime | None = None) -> datetime | None:
    """Start of the time range ``code`` (None for all time)."""
    hours = RANGES[code][1]
    return None if hours is None else (now or datetime.now(UTC)) - timedelta(hours=hours)


def fmt_time(value: datetime | None) -> str:
    """UTC timestamp to the second."""
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def heat_table(df: pd.DataFrame, title: str, order: list[str] | None = None) -> alt.LayerChart:
    """A confusion matrix (columns truth, predicted, n) as a heatmap with counts written in the cells."""
    order = order or sorted(set(df["truth"]) | set(df["predicted"]))
    base = alt.Chart(df).encode(
        x=alt.X("predicted:N", title="predicted", sort=order, axis=alt.Axis(labelAngle=-40, labelOverlap=False)),
        y=alt.Y("truth:N", title="truth", sort=order),
    )
    colour = alt.Color("n:Q", scale=alt.Scale(scheme="blues"), title="count", legend=alt.Legend(format="d"))
    rect = base.mark_rect().encode(color=colour)
    text = base.mark_text(fontSize=14).encode(
        text="n:Q", color=alt.condition(alt.datum.n > df["n"].max() / 2, alt.value("white"), alt.value("black"))
    )
    cell = alt.Step(56)  # a step per category (fixed pixel sizes collapse in Streamlit's renderer)
    return alt.layer(rect, text).properties(title=title, width=cell, height=cell)

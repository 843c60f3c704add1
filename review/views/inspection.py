"""Inspect: score an uploaded (or picked) image with a bundle, exactly as the edge agent would; nothing is stored."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from edge_agent.errors import BundleError, ImageDecodeError
from edge_agent.preprocess import IMAGE_SUFFIXES
from review import models_info as mi
from review.db import QueueFilter
from review.export import resolve
from review.media import LiveInspection, draw_outline, inspect_bytes
from review.views.common import Context, inspector_for

UPLOAD = "upload an image"
PICK = "pick one"
MAX_PICKS = 60


def candidates(ctx: Context) -> dict[str, Path]:
    """Images to pick from: the examples folder, then originals of the latest alarms still on disk."""
    found: dict[str, Path] = {}
    folder = ctx.cfg.paths.examples_dir
    if folder is not None and folder.is_dir():
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                found[f"example: {path.relative_to(folder).as_posix()}"] = path
    for row in ctx.store.queue(QueueFilter(), limit=MAX_PICKS):
        path = resolve(row.image_path, ctx.cfg.paths.media_root)
        if path is not None and path.is_file():
            found[f"#{row.id} {row.camera}: {row.frame_id}"] = path
    return dict(list(found.items())[:MAX_PICKS])


def _image_input(ctx: Context) -> tuple[bytes, str] | None:
    how = st.radio("Image", [UPLOAD, PICK], key="i_how", horizontal=True)
    if how == UPLOAD:
        types = sorted(s.lstrip(".") for s in IMAGE_SUFFIXES)
        uploaded = st.file_uploader("Image file", type=types, key="i_upload")
        return None if uploaded is None else (uploaded.getvalue(), uploaded.name)
    options = candidates(ctx)
    if not options:
        st.info("Nothing to pick: no examples folder configured and no alarm originals on disk.")
        return None
    label = st.selectbox("Image to score", list(options), key="i_pick")
    path = options[str(label)]
    return path.read_bytes(), path.name


def show(live: LiveInspection, image_name: str) -> None:
    """Verdict, score against threshold, defect type with confidence, heatmap and class probabilities."""
    r = live.result
    if r.anomalous:
        typed = f": {r.defect_type} ({r.type_confidence:.0%} confidence)" if r.defect_type else ""
        st.error(f"DEFECT{typed}")
    else:
        st.success("OK: looks like the good parts the model learnt")
    cols = st.columns(4)
    cols[0].metric("Score", f"{r.score:.4g}")
    cols[1].metric("Threshold", f"{r.threshold:.4g}")
    cols[2].metric("Normalised (0.5 = threshold)", f"{r.normalised_score:.2f}")
    cols[3].metric("Latency", f"{r.latency_ms:.0f} ms")
    left, right = st.columns(2)
    outlined = draw_outline(live.image_rgb, live.overlay_rgb)
    left.image(outlined, caption=f"{image_name}; magenta: region above the pixel threshold")
    right.image(live.overlay_rgb, caption="heatmap (blue: typical, red: anomalous)")
    if live.probabilities:
        probs = pd.DataFrame({"class": list(live.probabilities), "probability": list(live.probabilities.values())})
        chart = (
            alt.Chart(probs, title="Defect-type classifier")
            .mark_bar()
            .encode(
                x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1])),
                y=alt.Y("class:N", sort="-x", title=None),
                tooltip=["class", alt.Tooltip("probability:Q", format=".3f")],
            )
        )
        st.altair_chart(chart, width="stretch")
        if not r.anomalous:
            st.caption("The agent runs the classifier on anomalous frames only; shown here for information.")


def render(ctx: Context) -> None:
    """The inspect page."""
    st.title("Inspect an image")
    st.caption("Same pre-processing and int8 bundle as the edge agent. Nothing is stored.")
    bundles = [b for b in mi.find_bundles(ctx.cfg.paths.bundles_dir) if b.verified]
    if not bundles:
        st.info(f"No verified bundle under {ctx.cfg.paths.bundles_dir}.")
        return
    labels = [b.label for b in bundles]
    picked = st.selectbox("Model bundle", labels, key="i_bundle")
    bundle_dir = bundles[labels.index(picked)].path
    image = _image_input(ctx)
    if image is None:
        return
    data, name = image
    try:
        with st.spinner("Scoring..."):
            live = inspect_bytes(inspector_for(bundle_dir), data, name)
    except ImageDecodeError as err:
        st.error(f"Cannot read this image: {err}")
        return
    except BundleError as err:
        st.error(f"Cannot load the bundle: {err}")
        return
    show(live, name)

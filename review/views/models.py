"""Models: every bundle under the bundles folder, its manifest, export figures (float vs int8) and run metrics."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from edge_agent.bundle import sha256_file
from review import models_info as mi
from review.views.common import Context, heat_table


def _float_vs_export(title: str, figures: dict[str, Any], pairs: list[tuple[str, str, str]]) -> None:
    table = mi.float_vs_export(figures, pairs)
    if table.empty:
        return
    quality = table[table["metric"] != "size (MB)"]
    if not quality.empty:
        chart = (
            alt.Chart(quality, title=title)
            .mark_bar()
            .encode(
                x=alt.X("value:Q", scale=alt.Scale(domain=[0, 1]), title=None),
                y=alt.Y("metric:N", title=None),
                yOffset="model:N",
                color=alt.Color("model:N", title=None),
                tooltip=["metric", "model", alt.Tooltip("value:Q", format=".4f")],
            )
        )
        st.altair_chart(chart, width="stretch")
    wide = table.pivot(index="metric", columns="model", values="value").reset_index()
    st.dataframe(wide, hide_index=True)


def _headline(figures: dict[str, Any]) -> None:
    """The figures people look for first, with the exported model's change against float as the delta."""
    shown = [
        (label, figures[e], figures[e] - figures[f] if f else None)
        for label, f, e in (
            ("image AUROC", "auroc_float", "auroc_export"),
            ("F1 at the threshold", None, "f1_export"),
            ("PRO", "pro_float", "pro_export"),
            ("top-1 agreement with float", None, "top1_agreement"),
        )
        if isinstance(figures.get(e), int | float) and (f is None or isinstance(figures.get(f), int | float))
    ]
    if not shown:
        return
    precision = figures.get("precision", "exported")
    cols = st.columns(len(shown))
    for col, (label, value, delta) in zip(cols, shown, strict=True):
        col.metric(f"{label} ({precision})", f"{value:.4f}", None if delta is None else f"{delta:+.4f} vs float")


def _scalars(figures: dict[str, Any]) -> pd.DataFrame:
    rows = [{"figure": k, "value": v} for k, v in sorted(figures.items()) if isinstance(v, int | float | str)]
    return pd.DataFrame(rows, columns=["figure", "value"]).astype({"value": str})


def _run_section(role: str, folder: Path) -> None:
    metrics = mi.run_metrics(folder)
    if not metrics:
        return
    st.markdown(f"**Training-run metrics of the {role}** (`{folder}`)")
    keys = [k for k in mi.RUN_KEYS if isinstance(metrics.get(k), int | float)]
    if keys:
        cols = st.columns(min(len(keys), 6))
        for i, key in enumerate(keys[:6]):
            cols[i].metric(key.replace("_", " "), f"{float(metrics[key]):.3f}")
    note = metrics.get("evaluation")
    if note:
        st.caption(str(note))
    matrix = metrics.get("confusion_matrix")
    if isinstance(matrix, list) and matrix:
        names = metrics.get("class_names") or (["normal", "defect"] if len(matrix) == 2 else None)
        if names and len(names) == len(matrix):
            title = f"Confusion matrix ({role}, test split)"
            chart = heat_table(mi.confusion_frame(matrix, list(names)), title, list(names))
            st.altair_chart(chart, width="content")
    with st.expander(f"All figures of the {role} run"):
        st.dataframe(_scalars(metrics), hide_index=True)


def _feedback_section(ctx: Context, manifest_hash: str) -> None:
    df = ctx.store.frame()
    binary, types = mi.feedback_confusion(df, manifest_hash)
    st.markdown("**In production: reviewer feedback on this bundle's alarms**")
    if binary.empty:
        st.caption("No reviewed verdicts of this bundle yet.")
        return
    left, right = st.columns(2)
    left.altair_chart(heat_table(binary, "Agent's alarms vs reviewers", ["normal", "defect"]), width="content")
    if not types.empty:
        right.altair_chart(heat_table(types, "Predicted vs confirmed defect type"), width="content")


def _threshold_section(cal: dict[str, Any], role_figures: dict[str, Any], settings: dict[str, Any] | None) -> None:
    """The threshold, the false-alarm rate it was fitted for and gives, its recall on synthetic defects."""
    asked, bound = cal.get("false_alarm_rate"), cal.get("false_alarm_bound")
    recall = role_figures.get("synthetic_recall")
    if asked is not None:
        cols = st.columns(3)
        cols[0].metric("False-alarm rate asked", f"{asked:.2%}")
        cols[1].metric("Expected false-alarm rate", "-" if bound is None else f"{bound:.2%}")
        cols[2].metric("Recall on synthetic defects", "-" if recall is None else f"{recall:.1%}")
    st.caption(
        f"Threshold {cal.get('threshold', 0):.4g} (method {cal.get('method')}, fitted on "
        f"{cal.get('n_normal') or cal.get('n_validation')} normal scores on the exported model's own features: "
        f"{cal.get('n_validation')} validation images and leave-one-out scores of the training images); "
        f"normal median {cal.get('center', 0):.4g}; pixel threshold {cal.get('pixel_threshold', 0):.4g}."
    )
    if cal.get("note"):
        st.warning(cal["note"])
    if settings:
        chosen = ", ".join(f"{k} {v}" for k, v in settings.items() if k != "chosen_by")
        origin = "chosen by the search on normal images" if settings.get("chosen_by") == "search" else "from the config"
        st.caption(f"Settings ({origin}): {chosen}.")


def render(ctx: Context) -> None:
    """The models page."""
    st.title("Models")
    in_use = ctx.store.models_in_use()
    if not in_use.empty:
        st.subheader("What each camera runs")
        st.caption(
            "The model of each camera's latest verdict, per agent (line); every verdict records the version that "
            "scored it."
        )
        st.dataframe(in_use, hide_index=True)
    paths = ctx.cfg.paths
    bundles = mi.find_bundles(paths.bundles_dir, paths.runs_dir)
    if not bundles:
        st.info(f"No bundles (folders with manifest.json) under {paths.bundles_dir}.")
        return
    labels = [b.label for b in bundles]
    picked = st.selectbox("Bundle", labels, key="m_bundle")
    info = bundles[labels.index(picked)]
    man = info.manifest
    if info.verified:
        st.success("Bundle verifies: format version and the SHA-256 of every file match the manifest.")
    else:
        st.error(f"Bundle does not verify: {info.problem}")
    data = man.get("data", {})
    cols = st.columns(4)
    cols[0].metric("Precision", str(man.get("precision", "?")))
    cols[1].metric("Test images", str(data.get("test_images", "?")))
    cols[2].metric("Code version", str(man.get("code_version", "?")))
    cols[3].metric("Training images", str(data.get("train_images", "?")))
    st.caption(
        f"Version {man.get('version', '?')}, created {man.get('created', '?')} (UTC). "
        f"Data set {data.get('name', '?')}: {data.get('validation_images', '?')} validation images; "
        f"defect types {', '.join(data.get('defect_types', [])) or '-'}."
    )
    figures = man.get("metrics", {})
    update = figures.get("update")
    if isinstance(update, dict):
        st.subheader(f"Update from feedback of version {update.get('parent_version', '?')}")
        st.caption(
            f"{update.get('false_alarms', 0)} false alarms became normal data: "
            f"{update.get('false_alarms_still_alarming_before', '?')} alarmed before, "
            f"{update.get('false_alarms_still_alarming_after', '?')} after; test image AUROC "
            f"{update.get('test_auroc_before', math.nan):.3f} -> {update.get('test_auroc_after', math.nan):.3f}."
        )
        if "type_head" in update:
            used = update.get("type_head_feedback_used", 0)
            st.caption(f"Type head: {update['type_head']} ({used} confirmed defects).")
        st.dataframe(_scalars(update), hide_index=True)
    roles = man.get("models", {})
    for role, entry in sorted(roles.items(), key=lambda kv: (kv[0] != "scorer", kv[0])):
        st.subheader(f"{role}: {entry.get('kind')} ({entry.get('precision')})")
        cal = entry.get("calibration") or {}
        if cal:
            _threshold_section(cal, figures.get(role, {}), entry.get("settings"))
        if entry.get("class_names"):
            st.caption("Classes: " + ", ".join(entry["class_names"]))
        role_figures = figures.get(role, {})
        _headline(role_figures)
        if isinstance(role_figures.get("note"), str):
            st.caption(role_figures["note"])
        pairs = mi.SCORER_PAIRS if role == "scorer" else mi.CLASSIFIER_PAIRS
        _float_vs_export(f"{role}: float32 vs {role_figures.get('precision', 'exported')}", role_figures, pairs)
        with st.expander(f"All export figures of the {role}"):
            st.dataframe(_scalars(role_figures), hide_index=True)
        if role in info.runs:
            _run_section(role, info.runs[role])
    manifest_file = info.path / "manifest.json"
    _feedback_section(ctx, sha256_file(manifest_file)[:12])
    with st.expander("manifest.json"):
        st.json(man, expanded=False)

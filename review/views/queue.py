"""Review queue: the latest anomalous verdicts with filters, images and a feedback form each; the data set export."""

from __future__ import annotations

import math
from datetime import UTC, datetime, time

import pandas as pd
import streamlit as st

from review.db import LABELS, NO_TYPE, FeedbackRefusedError, QueueFilter, ReviewRow
from review.export import export_dataset, zip_folder
from review.media import draw_outline
from review.views.common import RANGES, Context, bundle_defect_types, fmt_time, range_label, since_for

LABEL_TEXT = {"defect": "confirmed defect", "false_alarm": "false alarm", "unsure": "unsure"}
OTHER = "other (type a name)"
REVIEWED = {"not reviewed": False, "reviewed": True, "all": None}
CUSTOM = "custom dates"


def filters(ctx: Context) -> QueueFilter:
    """The filter widgets and the filter they describe."""
    store = ctx.store
    with st.expander("Filters", expanded=True):
        c0, c1, c2, c3 = st.columns(4)
        agents = c0.multiselect("Agent (line)", store.agents(), key="q_agents")
        cameras = c1.multiselect("Camera", store.cameras(tuple(agents)), key="q_cameras")
        types = c2.multiselect("Defect type (predicted or confirmed)", [NO_TYPE, *store.defect_types()], key="q_types")
        reviewed = c3.radio("Review status", list(REVIEWED), key="q_reviewed", horizontal=True)
        c4, c5 = st.columns(2)
        ranges = [*RANGES, CUSTOM]
        span = c4.selectbox(
            "Time range",
            ranges,
            index=ranges.index(ctx.cfg.queue.default_range),
            format_func=range_label,
            key="q_range",
        )
        since = until = None
        if span == CUSTOM:
            today = datetime.now(UTC).date()
            picked = c4.date_input("From / to (UTC)", (today, today), key="q_dates")
            if isinstance(picked, tuple) and len(picked) == 2:
                since = datetime.combine(picked[0], time.min, UTC)
                until = datetime.combine(picked[1], time.max, UTC)
        else:
            since = since_for(span)
        low, high = c5.slider(
            "Normalised score (0 = typical normal, 0.5 = threshold)", 0.0, 1.0, (0.0, 1.0), 0.01, key="q_score"
        )
    return QueueFilter(tuple(cameras), since, until, tuple(types), low, high, REVIEWED[reviewed], agents=tuple(agents))


def _flash() -> None:
    message = st.session_state.pop("q_flash", None)
    if message:
        kind, text = message
        (st.success if kind == "ok" else st.error)(text)


def _submit(ctx: Context, verdict_id: int) -> None:
    """Form callback (runs before the rerun): store the feedback, leave a message for the next run."""
    state = st.session_state
    label = state.get(f"fb_label_{verdict_id}")
    if label is None:
        state["q_flash"] = ("error", f"Feedback on #{verdict_id} not saved: choose defect, false alarm or unsure.")
        return
    picked = state.get(f"fb_type_{verdict_id}")
    typed = state.get(f"fb_new_type_{verdict_id}", "")
    defect_type = typed.strip() if picked == OTHER else picked
    note = state.get(f"fb_note_{verdict_id}")
    try:
        entry = ctx.store.add_feedback(ctx.user, verdict_id, str(label), defect_type, note)
    except FeedbackRefusedError as err:
        state["q_flash"] = ("error", f"Feedback on #{verdict_id} not saved: {err}")
        return
    what = LABEL_TEXT[entry.label] + (f" ({entry.defect_type})" if entry.defect_type else "")
    state["q_flash"] = ("ok", f"Saved: #{verdict_id} is a {what}, by {entry.reviewer} at {fmt_time(entry.created_at)}.")
    st.toast(f"#{verdict_id}: {what} saved")


def feedback_form(ctx: Context, row: ReviewRow, known_types: list[str]) -> None:
    """Label, type and note of one verdict; disabled (and refused by the store) for viewers."""
    read_only = not ctx.user.can_write
    types = sorted({*known_types, *(t for t in (row.defect_type, row.confirmed_type) if t)})
    options = [*types, OTHER]
    preset = row.confirmed_type or row.defect_type
    with st.form(f"fb_form_{row.id}", border=False):
        st.radio(
            "Reviewer's verdict",
            LABELS,
            index=LABELS.index(row.label) if row.label else None,
            format_func=LABEL_TEXT.__getitem__,
            key=f"fb_label_{row.id}",
            horizontal=True,
            disabled=read_only,
        )
        st.selectbox(
            "Defect type (for a confirmed defect)",
            options,
            index=options.index(preset) if preset in options else len(options) - 1,
            key=f"fb_type_{row.id}",
            disabled=read_only,
        )
        st.text_input("New type name (when 'other')", key=f"fb_new_type_{row.id}", disabled=read_only)
        st.text_input("Note", key=f"fb_note_{row.id}", disabled=read_only, max_chars=2000)
        st.form_submit_button(
            "Save feedback",
            key=f"fb_submit_{row.id}",
            on_click=_submit,
            args=(ctx, row.id),
            disabled=read_only,
            help="viewers are read-only" if read_only else None,
        )


def card(ctx: Context, row: ReviewRow, known_types: list[str]) -> None:
    """One verdict: original with the thresholded region outlined, heatmap, score against threshold, model."""
    with st.container(border=True, key=f"card_{row.id}"):
        where = f"agent `{row.agent}` · camera `{row.camera}`"
        st.markdown(f"**#{row.id}** · {where} · {fmt_time(row.processed_at)} · `{row.frame_id}`")
        left, middle, right = st.columns([1, 1, 1.3])
        original = ctx.media(row.image_path)
        heatmap = ctx.heatmap(row.heatmap_path, original)
        if original is not None:
            left.image(draw_outline(original, heatmap), caption="original; magenta: region above the pixel threshold")
        else:
            left.info(f"original not available ({row.image_path or 'not kept'})")
        if heatmap is not None:
            middle.image(heatmap, caption="heatmap (blue: typical, red: anomalous)")
        else:
            middle.info("no heatmap saved")
        with right:
            ratio = row.score / row.threshold if row.threshold else math.inf
            st.metric("Score / threshold", f"{row.score:.3g} / {row.threshold:.3g}", f"x{ratio:.2f}", delta_color="off")
            st.progress(min(max(row.normalised_score, 0.0), 1.0), text=f"normalised {row.normalised_score:.2f}")
            typed = f"{row.defect_type} ({row.type_confidence:.0%})" if row.defect_type else "no classifier type"
            st.caption(f"Agent: {typed} · model {row.model_name} {row.model_version} (`{row.model_hash}`)")
            if row.label:
                note = f": {row.note}" if row.note else ""
                kind = LABEL_TEXT[row.label] + (f" ({row.confirmed_type})" if row.confirmed_type else "")
                st.caption(f"Latest review: **{kind}** by {row.reviewer}, {fmt_time(row.reviewed_at)}{note}")
            feedback_form(ctx, row, known_types)
            history = ctx.store.history(row.id)
            if len(history) > 1:
                with st.expander(f"History ({len(history)} reviews)"):
                    st.dataframe(pd.DataFrame([vars(h) for h in history]), hide_index=True)


def export_section(ctx: Context) -> None:
    """Reviewed verdicts as a labelled data set (reviewers only: it writes files on the server)."""
    st.subheader("Export reviewed frames as a training data set")
    st.caption(
        "Plain folder layout for training/data.py: `good/` (false alarms) and one folder per confirmed defect "
        "type, with labels.csv and a dataset.yaml. Unsure reviews are left out."
    )
    if not ctx.user.can_write:
        st.info("Exports are for reviewers.")
        return
    if st.button("Export now", key="q_export"):
        out = ctx.cfg.paths.export_dir / datetime.now(UTC).strftime("review-%Y%m%dT%H%M%S")
        try:
            report = export_dataset(ctx.store, out, ctx.cfg.paths.media_root)
        except OSError as err:
            st.error(f"Export failed: {err}")
            return
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(report.counts.items())) or "nothing"
        st.success(f"Exported {report.total} images to {out} ({counts}); {report.skipped_unsure} unsure left out.")
        if report.missing_images:
            st.warning(f"{len(report.missing_images)} originals were missing: " + "; ".join(report.missing_images[:5]))
        st.download_button("Download as ZIP", zip_folder(out), f"{out.name}.zip", "application/zip", key="q_zip")


def render(ctx: Context) -> None:
    """The review queue page."""
    st.title("Review queue")
    _flash()
    if not ctx.user.can_write:
        st.info("You are a viewer: feedback is read-only.")
    flt = filters(ctx)
    total = ctx.store.count(flt)
    size = ctx.cfg.queue.page_size
    pages = max(1, math.ceil(total / size))
    page = 1
    if pages > 1:
        page = int(st.columns(5)[0].number_input(f"Page (of {pages})", 1, pages, 1, key="q_page"))
    rows = ctx.store.queue(flt, limit=size, offset=(page - 1) * size)
    st.caption(f"{total} matching anomalous verdicts, newest first.")
    if rows:
        table = pd.DataFrame(
            {
                "id": [r.id for r in rows],
                "time (UTC)": [fmt_time(r.processed_at) for r in rows],
                "agent": [r.agent for r in rows],
                "camera": [r.camera for r in rows],
                "score": [r.score for r in rows],
                "threshold": [r.threshold for r in rows],
                "type": [r.defect_type or "" for r in rows],
                "model": [f"{r.model_name} {r.model_version}" for r in rows],
                "review": [LABEL_TEXT.get(r.label or "", "") for r in rows],
            }
        )
        st.dataframe(table, hide_index=True, key="q_table")
    known = sorted({*ctx.store.defect_types(), *bundle_defect_types(str(ctx.cfg.paths.bundles_dir))})
    for row in rows:
        card(ctx, row, known)
    st.divider()
    export_section(ctx)

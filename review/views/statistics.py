"""Statistics: frames and defects over time per camera, defect types, score distributions, false alarms, drift."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import altair as alt
import pandas as pd
import streamlit as st

from review import stats
from review.views.common import RANGES, Context, range_label, since_for


def _time_charts(df: pd.DataFrame, bucket: stats.Bucket) -> None:
    counts = stats.counts_over_time(df, bucket)
    unit = "hour" if bucket == "hour" else "day"
    x = alt.X("time:T", title=f"time (UTC, per {unit})")
    frames = (
        alt.Chart(counts, title=f"Frames per {unit}")
        .mark_line(point=True)
        .encode(x=x, y=alt.Y("frames:Q", title="frames"), color="camera:N", tooltip=["time:T", "camera", "frames"])
    )
    defects = (
        alt.Chart(counts, title=f"Defects (anomalous verdicts) per {unit}")
        .mark_bar()
        .encode(x=x, y=alt.Y("defects:Q", title="defects"), color="camera:N", tooltip=["time:T", "camera", "defects"])
    )
    left, right = st.columns(2)
    left.altair_chart(frames, width="stretch")
    right.altair_chart(defects, width="stretch")


def _type_and_score_charts(df: pd.DataFrame) -> None:
    left, right = st.columns(2)
    types = stats.defect_breakdown(df)
    if types.empty:
        left.info("No anomalous verdicts in this range.")
    else:
        chart = (
            alt.Chart(types, title="Defect types: agent's prediction and reviewers' confirmation")
            .mark_bar()
            .encode(
                x=alt.X("n:Q", title="frames"),
                y=alt.Y("type:N", title=None, sort="-x"),
                color=alt.Color("source:N", title=None),
                yOffset="source:N",
                tooltip=["type", "source", "n"],
            )
        )
        left.altair_chart(chart, width="stretch")
    scores = stats.score_distribution(df)
    hist = (
        alt.Chart(scores, title="Normalised scores, normal vs anomalous (threshold at 0.5)")
        .mark_bar(opacity=0.6, binSpacing=0)
        .encode(
            x=alt.X("normalised_score:Q", bin=alt.Bin(step=0.025, extent=[0, 1]), title="normalised score"),
            y=alt.Y("count():Q", stack=None, title="frames"),
            color=alt.Color("verdict:N", scale=alt.Scale(domain=["normal", "anomalous"], range=["#4c78a8", "#e45756"])),
        )
    )
    rule = alt.Chart(pd.DataFrame({"x": [0.5]})).mark_rule(strokeDash=[4, 4]).encode(x="x:Q")
    right.altair_chart(hist + rule, width="stretch")


def _false_alarms(df: pd.DataFrame) -> None:
    st.subheader("False alarms (from review feedback)")
    rates = stats.false_alarm_rates(df)
    overall = rates[-1]
    cols = st.columns(4)
    cols[0].metric("Reviewed anomalous frames", overall.reviewed)
    cols[1].metric("Confirmed defects", overall.confirmed)
    cols[2].metric("False alarms", overall.false_alarms)
    cols[3].metric("False-alarm rate", "-" if overall.rate is None else f"{overall.rate:.0%}")
    table = pd.DataFrame(
        [
            {
                "camera": r.camera,
                "reviewed": r.reviewed,
                "confirmed": r.confirmed,
                "false alarms": r.false_alarms,
                "unsure": r.unsure,
                "false-alarm rate": None if r.rate is None else round(r.rate, 3),
            }
            for r in rates
        ]
    )
    st.dataframe(table, hide_index=True, key="s_false_alarms")
    st.caption("Rate = false alarms / (false alarms + confirmed defects), latest review per frame; unsure left out.")


def _drift(ctx: Context, cameras: tuple[str, ...], agents: tuple[str, ...]) -> None:
    rule = ctx.cfg.drift
    st.subheader("Drift of normal scores")
    now = datetime.now(UTC)
    since = now - timedelta(hours=rule.recent_hours + rule.reference_hours)
    results = stats.drift(stats.by_station(ctx.store.frame(since, cameras, agents=agents)), rule, now)
    st.caption(
        f"Per camera and model, raw scores of frames judged normal: the last {rule.recent_hours:g} h against the "
        f"{rule.reference_hours:g} h before. Warns when both windows hold at least {rule.min_samples} frames and "
        f"the two-sample KS statistic D >= {rule.ks_threshold:g} or the median moved >= {rule.median_shift:g} "
        "reference spreads (IQR / 1.349). Drift means the line, the light or the camera changed: check them, "
        "then consider re-fitting the threshold or retraining."
    )
    if not results:
        st.info("No normal frames in the drift windows.")
        return
    for r in results:
        if r.warn:
            st.warning(f"Score drift on camera {r.camera}, model {r.model}: {r.reason}.")
    table = pd.DataFrame(
        [
            {
                "camera": r.camera,
                "model": r.model,
                "reference frames": r.n_reference,
                "recent frames": r.n_recent,
                "KS D": round(r.ks, 3),
                "KS p-value": r.p_value,
                "median reference": r.median_reference,
                "median recent": r.median_recent,
                "shift (spreads)": round(r.shift_in_spreads, 2),
                "result": r.reason,
            }
            for r in results
        ]
    )
    st.dataframe(table, hide_index=True, key="s_drift")
    if not any(r.enough_data for r in results):
        st.info("Not enough normal frames in both windows for a drift check yet.")
    elif not any(r.warn for r in results):
        st.success("No drift warning.")


def render(ctx: Context) -> None:
    """The statistics page."""
    st.title("Statistics")
    c1, c2, c3, c4 = st.columns(4)
    codes = list(RANGES)
    span = c1.selectbox("Time range", codes, index=codes.index("7d"), format_func=range_label, key="s_range")
    bucket = c2.radio("Per", ["hour", "day"], key="s_bucket", horizontal=True)
    agents = tuple(c3.multiselect("Agent (line)", ctx.store.agents(), key="s_agents"))
    cameras = tuple(c4.multiselect("Camera", ctx.store.cameras(agents), key="s_cameras"))
    df = stats.by_station(ctx.store.frame(since_for(span), cameras, agents=agents))
    if df.empty:
        st.info("No verdicts in this range.")
    else:
        n, anomalous = len(df), int(df["anomalous"].sum())
        cols = st.columns(4)
        cols[0].metric("Frames", n)
        cols[1].metric("Anomalous", anomalous)
        cols[2].metric("Anomaly rate", f"{anomalous / n:.1%}")
        cols[3].metric("Cameras", df["camera"].nunique())
        _time_charts(df, "hour" if bucket == "hour" else "day")
        _type_and_score_charts(df)
        _false_alarms(df)
    _drift(ctx, cameras, agents)

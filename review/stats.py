"""Statistics of verdicts: counts over time, defect types, score distributions, false alarms, score drift.

Inputs are the DataFrames ``ReviewStore.frame`` returns (one row per verdict, latest feedback label).

Drift rule (per camera and model, on the raw scores of frames judged normal): the recent window is the last
``recent_hours``, the reference window the ``reference_hours`` before it. With at least ``min_samples``
normal frames in each, a warning is raised when the two-sample Kolmogorov-Smirnov statistic D is at least
``ks_threshold`` or the median moved by at least ``median_shift`` reference spreads (spread = IQR / 1.349,
a robust standard deviation; the standard deviation when the IQR is 0).

Examples:
    >>> import numpy as np
    >>> round(ks_statistic(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])), 3)
    0.0
    >>> round(ks_statistic(np.array([1.0, 2.0]), np.array([5.0, 6.0])), 3)
    1.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import numpy as np
import pandas as pd

from review.config import DriftSection

Bucket = Literal["hour", "day"]


def by_station(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with cameras named ``<agent>/<camera>`` when it holds several agents (two lines may share ``cam1``)."""
    if "agent" not in df or df["agent"].nunique() <= 1:
        return df
    return df.assign(camera=df["agent"].astype(str) + "/" + df["camera"].astype(str))


def counts_over_time(df: pd.DataFrame, bucket: Bucket = "hour") -> pd.DataFrame:
    """Frames and defects (anomalous verdicts) per time bucket and camera: columns time, camera, frames, defects."""
    if df.empty:
        return pd.DataFrame(columns=["time", "camera", "frames", "defects"])
    freq = "h" if bucket == "hour" else "D"
    keyed = df.assign(time=df["processed_at"].dt.floor(freq), defect=df["anomalous"].astype(int))
    grouped = keyed.groupby(["time", "camera"], as_index=False).agg(frames=("id", "size"), defects=("defect", "sum"))
    return grouped.sort_values(["time", "camera"]).reset_index(drop=True)


def defect_breakdown(df: pd.DataFrame) -> pd.DataFrame:
    """Anomalous verdicts per defect type, predicted and confirmed by reviewers: columns type, source, n."""
    anomalous = df[df["anomalous"]]
    predicted = anomalous["defect_type"].fillna("(untyped)").value_counts()
    confirmed = df.loc[df["label"] == "defect", "confirmed_type"].fillna("(untyped)").value_counts()
    parts = [
        pd.DataFrame({"type": s.index, "source": name, "n": s.to_numpy()})
        for name, s in (("predicted", predicted), ("confirmed", confirmed))
        if not s.empty
    ]
    if not parts:
        return pd.DataFrame(columns=["type", "source", "n"])
    return pd.concat(parts, ignore_index=True)


def score_distribution(df: pd.DataFrame) -> pd.DataFrame:
    """Normalised scores labelled normal / anomalous (columns normalised_score, verdict) for a histogram."""
    return pd.DataFrame(
        {
            "normalised_score": df["normalised_score"].astype(float),
            "verdict": np.where(df["anomalous"], "anomalous", "normal"),
        }
    )


@dataclass(frozen=True)
class FalseAlarmRate:
    """False alarms among reviewed anomalous verdicts (unsure reviews are left out of the rate)."""

    camera: str
    reviewed: int
    false_alarms: int
    confirmed: int
    unsure: int

    @property
    def rate(self) -> float | None:
        """false alarms / (false alarms + confirmed defects); None without decided reviews."""
        decided = self.false_alarms + self.confirmed
        return self.false_alarms / decided if decided else None


def false_alarm_rates(df: pd.DataFrame) -> list[FalseAlarmRate]:
    """Per camera and overall ("all" last), from the latest feedback of anomalous verdicts."""
    reviewed = df[df["anomalous"] & df["label"].notna()]
    out = []
    for camera, part in [*sorted(reviewed.groupby("camera")), ("all", reviewed)]:
        labels = part["label"]
        out.append(
            FalseAlarmRate(
                str(camera),
                len(part),
                int((labels == "false_alarm").sum()),
                int((labels == "defect").sum()),
                int((labels == "unsure").sum()),
            )
        )
    return out


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    if a.size == 0 or b.size == 0:
        return 0.0
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / a.size
    cdf_b = np.searchsorted(b, grid, side="right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


def ks_pvalue(d: float, n: int, m: int) -> float:
    """Asymptotic two-sided p-value of a KS statistic ``d`` for sample sizes ``n`` and ``m``."""
    if d <= 0 or n == 0 or m == 0:
        return 1.0
    en = math.sqrt(n * m / (n + m))
    lam = (en + 0.12 + 0.11 / en) * d
    total = sum(2 * (-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return float(min(max(total, 0.0), 1.0))


def robust_spread(x: np.ndarray) -> float:
    """IQR / 1.349 (the standard deviation of a normal distribution); std, then a tiny floor, when 0."""
    q1, q3 = np.percentile(x, [25, 75])
    spread = float(q3 - q1) / 1.349
    return spread or float(np.std(x)) or 1e-12


@dataclass(frozen=True)
class DriftResult:
    """Drift check of one camera and model: window sizes, statistics, and whether it warns."""

    camera: str
    model: str
    n_reference: int
    n_recent: int
    ks: float
    p_value: float
    median_reference: float
    median_recent: float
    shift_in_spreads: float
    warn: bool
    enough_data: bool

    @property
    def reason(self) -> str:
        """Human-readable verdict of the rule."""
        if not self.enough_data:
            return "not enough normal frames in one of the windows"
        if not self.warn:
            return "no drift"
        return f"KS D = {self.ks:.2f}, median moved {self.shift_in_spreads:+.2f} reference spreads"


def drift(df: pd.DataFrame, rule: DriftSection, now: datetime) -> list[DriftResult]:
    """Apply the drift rule (module docstring) to the normal frames of every camera and model in ``df``."""
    recent_start = pd.Timestamp(now - timedelta(hours=rule.recent_hours))
    reference_start = pd.Timestamp(recent_start - timedelta(hours=rule.reference_hours))
    normal = df[~df["anomalous"]]
    results = []
    for (camera, model), part in sorted(normal.groupby(["camera", "model_hash"]), key=lambda kv: kv[0]):
        times = part["processed_at"]
        recent = part.loc[times >= recent_start, "score"].to_numpy(float)
        reference = part.loc[(times >= reference_start) & (times < recent_start), "score"].to_numpy(float)
        name = f"{part['model_name'].iloc[0]} {part['model_version'].iloc[0]} ({model})"
        enough = min(recent.size, reference.size) >= rule.min_samples
        if recent.size == 0 or reference.size == 0:
            results.append(DriftResult(str(camera), name, reference.size, recent.size, 0, 1, 0, 0, 0, False, False))
            continue
        d = ks_statistic(reference, recent)
        med_ref, med_recent = float(np.median(reference)), float(np.median(recent))
        shift = (med_recent - med_ref) / robust_spread(reference)
        warn = enough and (d >= rule.ks_threshold or abs(shift) >= rule.median_shift)
        p = ks_pvalue(d, reference.size, recent.size)
        results.append(
            DriftResult(str(camera), name, reference.size, recent.size, d, p, med_ref, med_recent, shift, warn, enough)
        )
    return results

"""Score maths in float32, outside any int8 graph: patch distances, SSIM/MSE maps, thresholds.

Shared by training (fitting), export (re-fitting on int8 scores) and the edge agent (scoring).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from statistics import NormalDist
from typing import Any

import cv2
import numpy as np

from edge_agent.config_base import StrictModel

log = logging.getLogger(__name__)


def patch_embedding(feature_maps: list[np.ndarray], pool: int = 3) -> np.ndarray:
    """Combine backbone feature maps (each HxWxC, finest first) into (H*W, sum C) float32 patches.

    Each map is locally averaged over ``pool`` x ``pool`` neighbours (PatchCore's neighbourhood
    aggregation) and resized to the grid of the first (finest) map before concatenation.
    """
    height, width = feature_maps[0].shape[:2]
    parts = []
    for fmap in feature_maps:
        fmap = np.asarray(fmap, np.float32)
        if pool > 1:
            fmap = _blur_channels(fmap, pool)
        if fmap.shape[:2] != (height, width):
            fmap = _resize_channels(fmap, width, height)
        parts.append(fmap.reshape(height * width, -1))
    return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)


def _blur_channels(fmap: np.ndarray, pool: int) -> np.ndarray:
    """Box filter per channel, in chunks of at most 512 channels (OpenCV's limit)."""
    chunks = [
        cv2.blur(fmap[:, :, i : i + 512], (pool, pool), borderType=cv2.BORDER_REFLECT_101)
        for i in range(0, fmap.shape[2], 512)
    ]
    out = np.concatenate([c if c.ndim == 3 else c[:, :, None] for c in chunks], axis=2)
    return out


def _resize_channels(fmap: np.ndarray, width: int, height: int) -> np.ndarray:
    chunks = [
        cv2.resize(fmap[:, :, i : i + 512], (width, height), interpolation=cv2.INTER_LINEAR)
        for i in range(0, fmap.shape[2], 512)
    ]
    return np.concatenate([c if c.ndim == 3 else c[:, :, None] for c in chunks], axis=2)


class ThreadedSearch:
    """Nearest-neighbour distances with the queries split over ``threads`` threads (BLAS and the numpy reductions
    release the GIL, which halves the search time of one image on two idle cores). Subclasses give ``_search``.

    With a ``whitening`` matrix (D, D) the bank rows are already whitened and each query is multiplied by it before
    the search: distances are L2 in the whitened space (see :func:`training.models.patchcore.fit_whitening`)."""

    threads: int = 1
    whitening: np.ndarray | None = None
    _pool: ThreadPoolExecutor | None = None

    def distances(self, queries: np.ndarray) -> np.ndarray:
        """L2 distance of each query row (in the patches' own space) to its nearest bank row."""
        queries = self._whiten(np.asarray(queries, np.float32))
        out = np.empty(len(queries), np.float32)
        if self.threads == 1 or len(queries) < 64 * self.threads:
            self._search(queries, out)
            return out
        bounds = np.linspace(0, len(queries), self.threads + 1).astype(int)
        self._run_shares(lambda part: self._search(*part), [(queries[a:b], out[a:b]) for a, b in pairwise(bounds)])
        return out

    def _run_shares(self, fn: Callable[[Any], Any], shares: list[Any]) -> list[Any]:
        """``fn`` of each share, the first in this thread and the others in the pool's threads."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="nn-search")
        futures = [self._pool.submit(fn, share) for share in shares[1:]]
        first = fn(shares[0])
        return [first, *(future.result() for future in futures)]

    def _whiten(self, queries: np.ndarray) -> np.ndarray:
        return queries if self.whitening is None else queries @ self.whitening

    def _search(self, queries: np.ndarray, out: np.ndarray) -> None:
        raise NotImplementedError


class NearestNeighbourIndex(ThreadedSearch):
    """Exact nearest-neighbour distances from query patches to a float32 memory bank (L2), ``chunk`` queries at a
    time."""

    def __init__(
        self, bank: np.ndarray, threads: int = 1, chunk: int = 4096, whitening: np.ndarray | None = None
    ) -> None:
        self.whitening = whitening
        self.bank = np.ascontiguousarray(bank, dtype=np.float32)
        self.bank_t = np.ascontiguousarray(self.bank.T)
        self.bank_sq = np.einsum("ij,ij->i", self.bank, self.bank).astype(np.float32)
        self.threads = max(1, threads)
        self.chunk = chunk

    def _search(self, queries: np.ndarray, out: np.ndarray) -> None:
        for start in range(0, len(queries), self.chunk):
            q = queries[start : start + self.chunk]
            d2 = q @ self.bank_t
            d2 *= -2.0
            d2 += self.bank_sq[None, :]
            best = d2.min(axis=1) + np.einsum("ij,ij->i", q, q)
            out[start : start + self.chunk] = np.sqrt(np.maximum(best, 0.0))


def distance_map(distances: np.ndarray, grid: tuple[int, int], out_size: int, sigma: float) -> np.ndarray:
    """Patch distances on their grid, upsampled to out_size x out_size and Gaussian-smoothed."""
    grid_map = distances.reshape(grid).astype(np.float32)
    full = cv2.resize(grid_map, (out_size, out_size), interpolation=cv2.INTER_LINEAR)
    return gaussian_smooth(full, sigma)


def image_score(anomaly_map: np.ndarray, top_fraction: float | None = None) -> float:
    """Image score from its anomaly map: the maximum, or the mean of the highest ``top_fraction`` of the pixels."""
    if not top_fraction:
        return float(anomaly_map.max())
    flat = anomaly_map.ravel()
    k = max(1, round(top_fraction * flat.size))
    return float(largest(flat, k).mean(dtype=np.float64))


def largest(values: np.ndarray, k: int, stride: int = 16) -> np.ndarray:
    """The ``k`` largest of a 1-D array, in no order. Exact, and about 6x faster than a partition of the whole
    array on a 448 px map (`bench/results/score.md`): every ``stride``-th value gives a cut-off that about ``2 k``
    values pass, and only those are partitioned (the whole array when fewer than ``k`` pass)."""
    sample = values[::stride]
    rank = 2 * k // stride + 1  # from the top of the sample
    if k < values.size and rank * 4 <= sample.size:
        cut = np.partition(sample, sample.size - rank)[sample.size - rank]
        passed = values[values >= cut]
        if passed.size >= k:  # then the k-th largest passed, and with it every larger value
            values = passed
    return np.partition(values, values.size - k)[values.size - k :]


def gaussian_smooth(anomaly_map: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with a kernel of 4 sigma each side; sigma 0 returns the map unchanged."""
    if sigma <= 0:
        return anomaly_map.astype(np.float32)
    ksize = int(2 * round(4 * sigma) + 1)
    return cv2.GaussianBlur(anomaly_map.astype(np.float32), (ksize, ksize), sigma)


def ssim_map(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """Per-pixel SSIM (Gaussian window 11, sigma 1.5) of two HxWxC float images, averaged over C."""
    a = a.astype(np.float32)
    b = b.astype(np.float32)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2

    def blur(x: np.ndarray) -> np.ndarray:
        out = cv2.GaussianBlur(x, (11, 11), 1.5)
        return out if out.ndim == 3 else out[:, :, None]

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    ssim: np.ndarray = (num / den).mean(axis=2).astype(np.float32)
    return ssim


def reconstruction_map(original: np.ndarray, recon: np.ndarray, ssim_weight: float) -> np.ndarray:
    """Autoencoder anomaly map: (1-w) * squared error + w * (1 - SSIM), both per pixel, float32."""
    mse = ((original.astype(np.float32) - recon.astype(np.float32)) ** 2).mean(axis=2)
    dssim = 1.0 - ssim_map(original, recon)
    mixed: np.ndarray = ((1 - ssim_weight) * mse + ssim_weight * dssim).astype(np.float32)
    return mixed


class Calibration(StrictModel):
    """Threshold and score normalisation fitted on normal images held out from training (typed, every field
    required: ``None`` must be written, never left out).

    normalised = 0.5 * (score - center) / (threshold - center), clipped to [0, 1]: the median normal
    score maps to 0, the threshold to 0.5. ``false_alarm_rate`` is the rate the line asked for (None for the
    older rules), ``false_alarm_bound`` the rate the fitted threshold is expected to give on good parts (an
    upper estimate from the normal scores' ranks), ``n_normal`` how many normal scores were used and
    ``note`` a warning when they were too few for the rate asked.
    """

    threshold: float
    center: float
    pixel_threshold: float
    method: str
    n_validation: int
    false_alarm_rate: float | None
    false_alarm_bound: float | None
    n_normal: int | None
    note: str | None

    def normalise(self, scores: np.ndarray | float) -> np.ndarray:
        """Map raw scores to [0, 1] with the threshold at 0.5."""
        span = max(self.threshold - self.center, 1e-12)
        normalised: np.ndarray = np.clip(0.5 * (np.asarray(scores, np.float32) - self.center) / span, 0.0, 1.0)
        return normalised

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """Inverse of :meth:`to_dict`; a missing or extra key is a ``pydantic.ValidationError`` naming it."""
        return cls.model_validate(data)


def normal_scores_needed(rate: float) -> int:
    """Normal scores needed before the order-statistic threshold at ``rate`` no longer rests on the top score."""
    return math.ceil(2.0 / rate) - 1


def false_alarm_threshold(scores: np.ndarray, rate: float) -> tuple[float, float, str | None]:
    """Threshold flagging at most ``rate`` of good parts, from normal scores: (threshold, bound, warning).

    With enough scores it is the split-conformal order statistic: the k-th smallest score, k = ceil((n+1)(1-rate)),
    so that a new good part scores at or above it with probability at most ``rate`` (exchangeability), and the
    highest score never sets it: one odd image cannot move it. With too few scores the rate cannot be resolved:
    a robust tail estimate (median and MAD of the log scores, Gaussian quantile) is used, never below the
    second-highest score, and the warning says how many normal images the rate needs. ``bound`` is
    (1 + #scores above the threshold) / (n + 1), the false-alarm rate to expect.
    """
    s = np.sort(np.asarray(scores, np.float64))
    n = s.size
    k = math.ceil((n + 1) * (1.0 - rate))
    warning = None
    if k <= n - 1:
        threshold = float(s[k - 1])
    else:
        needed = normal_scores_needed(rate)
        warning = (
            f"{n} normal scores are too few for a false-alarm rate of {rate:g}: {needed} are needed; "
            "the threshold is a robust tail estimate, and the false-alarm rate may differ from the one asked"
        )
        logged = np.log(np.maximum(s, 1e-12)) if s[0] > 0 else s
        centre = float(np.median(logged))
        spread = 1.4826 * float(np.median(np.abs(logged - centre))) or float(logged.std()) or 1e-6
        estimate = centre + NormalDist().inv_cdf(1.0 - rate) * spread
        threshold = float(np.exp(estimate)) if s[0] > 0 else estimate
        threshold = max(threshold, float(s[-2]) if n >= 2 else float(s[-1]))
    bound = (1.0 + float((s > threshold).sum())) / (n + 1.0)
    return threshold, min(bound, 1.0), warning


def fit_calibration(
    val_scores: np.ndarray,
    val_maps: np.ndarray | None,
    method: str = "false_alarm_rate",
    k: float = 3.0,
    quantile: float = 0.99,
    pixel_quantile: float = 0.999,
    false_alarm_rate: float = 0.01,
    extra_scores: np.ndarray | None = None,
) -> Calibration:
    """Fit the image threshold (and a pixel threshold) on scores of normal images held out from training.

    ``false_alarm_rate`` (the default method): see :func:`false_alarm_threshold`; ``extra_scores`` are further
    normal scores (PatchCore's leave-one-image-out scores of its training images) pooled with the validation
    scores. ``mean_std`` and ``quantile`` are the older rules on validation scores alone; they never collapse
    to the minimum: at least the ``quantile`` and strictly above the median.
    """
    scores = np.asarray(val_scores, np.float64)
    if scores.size == 0:
        msg = "cannot fit a threshold without validation scores"
        raise ValueError(msg)
    n_validation = int(scores.size)
    pixel_threshold = float(np.quantile(val_maps, pixel_quantile)) if val_maps is not None else None
    if method == "false_alarm_rate":
        if extra_scores is not None:
            scores = np.concatenate([scores, np.asarray(extra_scores, np.float64)])
        threshold, bound, note = false_alarm_threshold(scores, false_alarm_rate)
        if note:
            log.warning("threshold: %s", note)
        return Calibration(
            threshold=threshold,
            center=float(np.median(scores)),
            pixel_threshold=threshold if pixel_threshold is None else pixel_threshold,
            method=method,
            n_validation=n_validation,
            false_alarm_rate=false_alarm_rate,
            false_alarm_bound=bound,
            n_normal=int(scores.size),
            note=note,
        )
    center = float(np.median(scores))
    spread = float(scores.std()) or max(abs(center) * 0.05, 1e-6)
    upper = float(np.quantile(scores, quantile))
    threshold = float(scores.mean()) + k * spread if method == "mean_std" else upper
    threshold = max(threshold, upper, center + 0.5 * spread)
    bound = (1.0 + float((scores > threshold).sum())) / (scores.size + 1.0)
    pixel = threshold if pixel_threshold is None else pixel_threshold
    return Calibration(
        threshold=float(threshold),
        center=center,
        pixel_threshold=pixel,
        method=method,
        n_validation=n_validation,
        false_alarm_rate=None,
        false_alarm_bound=bound,
        n_normal=n_validation,
        note=None,
    )

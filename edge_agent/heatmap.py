"""Heatmap overlays: anomaly map in colour over the image, optional outlines of masks."""

from __future__ import annotations

import cv2
import numpy as np

from edge_agent.scoring import Calibration

#: Red is this multiple of the threshold; blue is the median normal score (``Calibration.center``).
RED_AT_THRESHOLD_TIMES = 1.5


def colour_range(calibration: Calibration) -> tuple[float, float]:
    """(blue, red) score values of every heatmap: the agent's, the review page's and training's look alike."""
    low = calibration.center
    return low, max(calibration.threshold * RED_AT_THRESHOLD_TIMES, low + 1e-6)


def calibrated_heatmap(
    image_rgb: np.ndarray, anomaly_map: np.ndarray, calibration: Calibration, truth_mask: np.ndarray | None = None
) -> np.ndarray:
    """BGR overlay on the calibrated colour scale, pixels above ``pixel_threshold`` outlined in white."""
    low, high = colour_range(calibration)
    predicted = anomaly_map >= calibration.pixel_threshold
    return render_heatmap(image_rgb, anomaly_map, low, high, truth_mask, predicted)


def render_heatmap(
    image_rgb: np.ndarray,
    anomaly_map: np.ndarray,
    low: float,
    high: float,
    truth_mask: np.ndarray | None = None,
    predicted_mask: np.ndarray | None = None,
    alpha: float = 0.45,
) -> np.ndarray:
    """BGR uint8 overlay: map scaled so ``low`` is blue and ``high`` red; truth outlined green, prediction white."""
    h, w = image_rgb.shape[:2]
    amap = cv2.resize(anomaly_map.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    # (amap - low) / (high - low) * 255, rounded and saturated to 0..255 in one pass: 0.12 ms at 512 px against
    # 0.69 for numpy's subtract, divide, clip, multiply and cast (scratch timing, one thread)
    gain = 255.0 / max(high - low, 1e-12)
    levels = cv2.addWeighted(amap, gain, amap, 0.0, -low * gain, dtype=cv2.CV_8U)
    colour = cv2.applyColorMap(levels, cv2.COLORMAP_JET)
    base = image_rgb if image_rgb.shape[2] == 3 else np.repeat(image_rgb, 3, axis=2)
    base_bgr = cv2.cvtColor(np.ascontiguousarray(base), cv2.COLOR_RGB2BGR)
    out = cv2.addWeighted(base_bgr, 1 - alpha, colour, alpha, 0.0)
    for mask, bgr in ((predicted_mask, (255, 255, 255)), (truth_mask, (0, 255, 0))):
        if mask is None or not mask.any():
            continue
        resized = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(resized, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, bgr, max(1, w // 256))
    return out

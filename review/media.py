"""Images for the page: originals, heatmaps, the outline of the thresholded region, and live inspection.

The agent saves either the anomaly map with its scale (``heatmap_format: map``, the default), which the page draws
over the original here, or the overlay drawn already. Overlays (``edge_agent.heatmap.render_heatmap``) draw the
region above the pixel threshold as a white outline. A JET colour blended over an image never gets all three
channels above 197 (0.55 * 255 + 0.45 * 126, the largest smallest channel of the JET map), so pixels with every
channel >= 220 are the outline, also in a JPEG heatmap; it is recovered from the overlay and drawn on the original.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_agent.bundle import Bundle
from edge_agent.errors import ImageDecodeError
from edge_agent.heatmap import calibrated_heatmap, decode_map
from edge_agent.inspector import InspectionResult, Inspector
from edge_agent.preprocess import decode_image, read_image

OUTLINE_RGB = (255, 0, 255)
OUTLINE_MIN = 220


def load_rgb(path: Path | None) -> np.ndarray | None:
    """RGB uint8 image of a file; None when there is no path or the file is missing or unreadable."""
    if path is None:
        return None
    try:
        return read_image(path)
    except ImageDecodeError:
        return None


def load_heatmap(path: Path | None, original_rgb: np.ndarray | None) -> np.ndarray | None:
    """A saved heatmap as RGB: a stored map drawn over the original (its colours alone without one), a drawn
    overlay as it is; None when there is no path or the file is missing or unreadable."""
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None
    stored = decode_map(data)
    if stored is not None:
        return cv2.cvtColor(stored.overlay(original_rgb), cv2.COLOR_BGR2RGB)
    try:
        return decode_image(data, str(path))
    except ImageDecodeError:
        return None


def outline_mask(heatmap_rgb: np.ndarray) -> np.ndarray:
    """Boolean mask of the white outline pixels the agent drew on its heatmap overlay (module docstring)."""
    return np.all(heatmap_rgb >= OUTLINE_MIN, axis=2)


def draw_outline(image_rgb: np.ndarray, heatmap_rgb: np.ndarray | None) -> np.ndarray:
    """The original with the heatmap's thresholded-region outline drawn on it (magenta)."""
    out = np.ascontiguousarray(image_rgb.copy())
    if heatmap_rgb is None:
        return out
    mask = outline_mask(heatmap_rgb).astype(np.uint8)
    if mask.shape != out.shape[:2]:
        mask = cv2.resize(mask, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_NEAREST)
    if mask.any():
        thick = max(1, out.shape[1] // 256)
        mask = cv2.dilate(mask, np.ones((thick, thick), np.uint8))
        out[mask > 0] = OUTLINE_RGB
    return out


@dataclass(frozen=True)
class LiveInspection:
    """An image scored on the page with a bundle, exactly as the agent scores it."""

    result: InspectionResult
    image_rgb: np.ndarray
    overlay_rgb: np.ndarray
    probabilities: dict[str, float]


def inspect_bytes(inspector: Inspector, data: bytes, name: str = "<upload>") -> LiveInspection:
    """Decode ``data`` with the shared pre-processing (a large JPEG reduced, as the agent does), score it, and
    render the heatmap like the agent."""
    image = decode_image(data, name, inspector.input_side)
    return inspect_image(inspector, image)


def inspect_image(inspector: Inspector, image: np.ndarray) -> LiveInspection:
    """Score an RGB uint8 image; classify it even when normal, so the type probabilities can be shown."""
    result = inspector.inspect(image, classify_all=True)
    overlay_bgr = calibrated_heatmap(image, result.anomaly_map, inspector.calibration)
    probabilities: dict[str, float] = {}
    if inspector.classifier is not None and result.type_probabilities is not None:
        names = inspector.classifier.class_names
        probabilities = {n: float(p) for n, p in zip(names, result.type_probabilities, strict=True)}
    return LiveInspection(result, image, cv2.cvtColor(overlay_bgr, cv2.COLOR_BGR2RGB), probabilities)


def bundle_label(bundle: Bundle) -> str:
    """Short human name of a bundle."""
    return f"{bundle.name} {bundle.version} ({bundle.digest})"

"""The stored anomaly map (``heatmap_format: map``): PNG bytes that carry their own scale."""

from __future__ import annotations

import cv2
import numpy as np

from edge_agent.heatmap import MAP_KEYWORD, decode_map, encode_map
from edge_agent.scoring import Calibration
from tests.harness import fixed_calibration


def _calibration(center: float = 2.0, threshold: float = 6.0, pixel_threshold: float = 5.0) -> Calibration:
    return fixed_calibration(center, threshold, pixel_threshold)


def _blob_map(side: int = 320) -> np.ndarray:
    yy, xx = np.mgrid[0:side, 0:side]
    return (1.0 + 8.0 * np.exp(-((yy - side * 0.3) ** 2 + (xx - side * 0.6) ** 2) / (2 * (side * 0.1) ** 2))).astype(
        np.float32
    )


def test_round_trip_keeps_values_scale_and_region():
    amap, calibration = _blob_map(), _calibration()
    data = encode_map(amap, calibration, side=1024)
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).shape == amap.shape  # a valid PNG
    stored = decode_map(data)
    assert stored is not None and stored.levels.shape == amap.shape
    assert (stored.blue, stored.red, stored.pixel_threshold) == (2.0, 9.0, 5.0)  # red at 1.5 x the threshold
    values = stored.scores(*amap.shape[::-1])
    inside = (amap > stored.blue) & (amap < stored.top)
    assert np.abs(values - amap)[inside].max() <= (stored.top - stored.blue) / 255 * 0.51
    assert ((values >= 5.0) != (amap >= 5.0)).mean() < 0.002  # the region above the pixel threshold


def test_a_map_larger_than_the_cap_is_shrunk_and_still_outlined():
    stored = decode_map(encode_map(_blob_map(320), _calibration(), side=64))
    assert stored is not None and stored.levels.shape == (64, 64)
    overlay = stored.overlay(np.full((512, 512, 3), 128, np.uint8))
    assert overlay.shape == (512, 512, 3) and np.all(overlay >= 220, axis=2).any()  # the white outline


def test_pixel_threshold_above_red_stays_inside_the_levels():
    """The levels reach a quarter beyond the pixel threshold even when it lies above the colour scale's red."""
    calibration = _calibration(center=2.0, threshold=4.0, pixel_threshold=8.0)  # red at 6
    stored = decode_map(encode_map(_blob_map(), calibration, side=1024))
    assert stored is not None and stored.top > 8.0
    assert (stored.scores(320, 320) >= 8.0).any()


def test_other_pngs_and_damaged_scales_are_not_maps():
    plain = cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes()
    assert decode_map(plain) is None and decode_map(b"not a png") is None
    data = encode_map(_blob_map(32), _calibration(), side=1024)
    damaged = data.replace(MAP_KEYWORD + b"\0{", MAP_KEYWORD + b"\0[")  # the scale no longer parses as an object
    assert decode_map(damaged) is None

"""Saved heatmaps are at most ``heatmap_max_side`` wide; the original keeps its size; the review page's outline
still lands on the original. The stored map (the default) gives back the scorer's map and its thresholded region."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from edge_agent.bundle import load_bundle
from edge_agent.config import CameraConfig
from edge_agent.heatmap import decode_map
from edge_agent.inspector import Inspector
from edge_agent.pipeline import CameraPipeline, Outputs
from edge_agent.preprocess import read_image
from edge_agent.records import Frame
from edge_agent.store import Store
from review.media import draw_outline, load_heatmap, outline_mask


def test_heatmaps_are_capped_and_the_outline_still_fits(tmp_path, bottle_bundle, datasets_root):
    path = datasets_root / "mvtec_ad/bottle/test/broken_large/000.png"
    image = read_image(path)
    assert image.shape[:2] == (512, 512)
    inspector = Inspector(load_bundle(bottle_bundle), threads=1)
    store = Store(f"sqlite:///{tmp_path / 'agent.db'}")
    sides = {}
    for cap in (1024, 256):
        cam = CameraConfig.model_validate(
            {
                "id": f"cam{cap}",
                "bundle": "unused",
                "heatmap_format": "jpg",
                "heatmap_max_side": cap,
                "source": {"type": "folder", "path": "x"},
            }
        )
        pipeline = CameraPipeline(cam, inspector, store, Outputs("it", None, None), tmp_path / "data")
        verdict = pipeline.process(Frame(cam.id, "folder", path.name, datetime.now(UTC), str(path)), image)
        assert verdict is not None and verdict.anomalous and verdict.heatmap_path and verdict.image_path
        heatmap = cv2.cvtColor(cv2.imread(verdict.heatmap_path), cv2.COLOR_BGR2RGB)
        sides[cap] = heatmap.shape[:2]
        assert read_image(verdict.image_path).shape == image.shape  # the original copy is full size
        assert outline_mask(heatmap).any()
        outlined = draw_outline(image, heatmap)
        assert outlined.shape == image.shape and np.any(outlined != image)
    store.close()
    assert sides == {1024: (512, 512), 256: (256, 256)}


def test_stored_map_gives_back_the_scorers_map_and_region(tmp_path, bottle_bundle, datasets_root):
    path = datasets_root / "mvtec_ad/bottle/test/broken_large/000.png"
    image = read_image(path)
    inspector = Inspector(load_bundle(bottle_bundle), threads=1)
    truth = inspector.inspect(image).anomaly_map
    store = Store(f"sqlite:///{tmp_path / 'agent.db'}")
    cam = CameraConfig.model_validate({"id": "cam", "bundle": "unused", "source": {"type": "folder", "path": "x"}})
    assert cam.heatmap_format == "map"
    pipeline = CameraPipeline(cam, inspector, store, Outputs("it", None, None), tmp_path / "data")
    verdict = pipeline.process(Frame(cam.id, "folder", path.name, datetime.now(UTC), str(path)), image)
    store.close()
    assert verdict is not None and verdict.anomalous and verdict.heatmap_path and verdict.image_path
    assert verdict.heatmap_path.endswith(".heatmap.png")
    stored = decode_map(Path(verdict.heatmap_path).read_bytes())
    assert stored is not None and stored.levels.shape == truth.shape  # the map's own size: under the cap
    calibration = inspector.calibration
    assert stored.pixel_threshold == calibration.pixel_threshold and stored.blue == calibration.center
    values = stored.scores(truth.shape[1], truth.shape[0])
    step = (stored.top - stored.blue) / 255
    inside = (truth > stored.blue) & (truth < stored.top)
    assert inside.sum() > 10_000 and np.abs(values - truth)[inside].max() <= step * 0.51  # below blue: blue
    region, expected = values >= stored.pixel_threshold, truth >= calibration.pixel_threshold
    assert expected.any() and (region & expected).sum() / (region | expected).sum() > 0.97
    # the review page draws it over the original at the original's size, outline included
    drawn = load_heatmap(Path(verdict.heatmap_path), read_image(verdict.image_path))
    assert drawn is not None and drawn.shape == image.shape and outline_mask(drawn).any()
    alone = load_heatmap(Path(verdict.heatmap_path), None)
    assert alone is not None and max(alone.shape[:2]) == 512 and outline_mask(alone).any()
    assert decode_map(path.read_bytes()) is None  # an ordinary PNG is not a stored map

"""Saved heatmaps are drawn at most ``heatmap_max_side`` wide; the original keeps its size; the review page's outline
still lands on the original."""

from __future__ import annotations

from datetime import UTC, datetime

import cv2
import numpy as np

from edge_agent.bundle import load_bundle
from edge_agent.config import CameraConfig
from edge_agent.inspector import Inspector
from edge_agent.pipeline import CameraPipeline, Outputs
from edge_agent.preprocess import read_image
from edge_agent.records import Frame
from edge_agent.store import Store
from review.media import draw_outline, outline_mask


def test_heatmaps_are_capped_and_the_outline_still_fits(tmp_path, bottle_bundle, datasets_root):
    path = datasets_root / "mvtec_ad/bottle/test/broken_large/000.png"
    image = read_image(path)
    assert image.shape[:2] == (512, 512)
    inspector = Inspector(load_bundle(bottle_bundle), threads=1)
    store = Store(f"sqlite:///{tmp_path / 'agent.db'}")
    sides = {}
    for cap in (1024, 256):
        cam = CameraConfig.model_validate(
            {"id": f"cam{cap}", "bundle": "unused", "heatmap_max_side": cap, "source": {"type": "folder", "path": "x"}}
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

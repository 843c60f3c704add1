"""Building blocks of the review tests: a config with users, verdict rows written by the agent's store."""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import yaml
from streamlit.testing.v1 import AppTest

from edge_agent.heatmap import encode_map, render_heatmap
from edge_agent.preprocess import read_image
from edge_agent.records import VerdictRecord
from edge_agent.store import Store
from review.auth import MIN_ITERATIONS, hash_password
from tests.harness import fixed_calibration

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "review" / "app.py"
REVIEWER, REVIEWER_PW = "rita", "rita-reviews-42"
VIEWER, VIEWER_PW = "victor", "victor-views-42"
VIEWER_ENV = "LINEWATCH_TEST_VIEWER_HASH"
MODEL = ("bottle-patchcore-int8", "20260101-000000", "abc123def456")


def write_config(folder: Path, db_url: str, **paths: object) -> Path:
    """A review config with a reviewer (inline hash) and a viewer (hash from $LINEWATCH_TEST_VIEWER_HASH)."""
    cfg = {
        "database": {"url": db_url},
        "paths": {"export_dir": str(folder / "exports"), "bundles_dir": str(folder / "bundles"), "runs_dir": None}
        | {k: str(v) for k, v in paths.items()},
        "users": [
            {"name": REVIEWER, "role": "reviewer", "password_hash": hash_password(REVIEWER_PW, MIN_ITERATIONS)},
            {"name": VIEWER, "role": "viewer", "password_hash_env": VIEWER_ENV},
        ],
    }
    path = folder / "review.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def viewer_hash() -> str:
    """What the viewer's environment variable must hold."""
    return hash_password(VIEWER_PW, MIN_ITERATIONS)


def record(
    camera: str,
    frame_id: str,
    processed_at: datetime,
    score: float,
    threshold: float = 10.0,
    center: float = 5.0,
    defect_type: str | None = None,
    image_path: str | None = None,
    heatmap_path: str | None = None,
    agent: str = "line1",
) -> VerdictRecord:
    """A verdict as the pipeline builds it (normalised score from the same calibration formula)."""
    normalised = float(np.clip(0.5 * (score - center) / (threshold - center), 0.0, 1.0))
    return VerdictRecord(
        camera=camera,
        source="folder",
        frame_id=frame_id,
        captured_at=processed_at - timedelta(milliseconds=50),
        processed_at=processed_at,
        model_name=MODEL[0],
        model_version=MODEL[1],
        model_hash=MODEL[2],
        score=score,
        normalised_score=normalised,
        threshold=threshold,
        anomalous=score >= threshold,
        defect_type=defect_type,
        type_confidence=0.8 if defect_type else None,
        heatmap_path=heatmap_path,
        image_path=image_path,
        latency_ms=30.0,
        agent=agent,
    )


def alarm_media(source: Path, folder: Path, stored_map: bool = True) -> tuple[str, str]:
    """Copy a real image and save a heatmap of it the way the agent does: the stored map (its default), or a JPEG
    overlay with a white outline (``heatmap_format: jpg``)."""
    folder.mkdir(parents=True, exist_ok=True)
    image_path = folder / source.name
    shutil.copyfile(source, image_path)
    image = read_image(image_path)
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    amap = (5.0 + 20.0 * np.exp(-((yy - h * 0.4) ** 2 + (xx - w * 0.6) ** 2) / (2 * (0.08 * w) ** 2))).astype(
        np.float32
    )
    if stored_map:  # blue at 5, red at 1.5 x 10 = 15, outline at 12: as the overlay below
        calibration = fixed_calibration(center=5.0, threshold=10.0, pixel_threshold=12.0)
        heatmap_path = folder / f"{source.stem}.heatmap.png"
        heatmap_path.write_bytes(encode_map(cv2.resize(amap, (w // 2, h // 2)), calibration, 1024))
        return str(image_path), str(heatmap_path)
    overlay = render_heatmap(image, amap, 5.0, 15.0, predicted_mask=amap >= 12.0)
    heatmap_path = folder / f"{source.stem}.heatmap.jpg"
    cv2.imwrite(str(heatmap_path), overlay, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return str(image_path), str(heatmap_path)


LINES = {"cam1": "line1", "cam2": "line2"}


def fill_queue_db(db_path: Path, datasets_root: Path, media: Path) -> dict[str, list[int]]:
    """Alarms on two cameras of two lines (``cam1`` on agent line1, ``cam2`` on line2; real bottle images and
    heatmaps) and normal frames; ids by kind."""
    test_dir = datasets_root / "mvtec_ad" / "bottle" / "test"
    now = datetime.now(UTC)
    store = Store(f"sqlite:///{db_path}")
    ids: dict[str, list[int]] = {"cam1": [], "cam2": [], "normal": []}
    try:
        alarms = [
            ("cam1", test_dir / "broken_large" / "000.png", 30.0, "broken_large", 2),
            ("cam1", test_dir / "broken_large" / "001.png", 22.0, "broken_large", 3),
            ("cam1", test_dir / "contamination" / "000.png", 12.0, "contamination", 5),
            ("cam2", test_dir / "broken_small" / "000.png", 18.0, "broken_small", 1),
            ("cam2", test_dir / "good" / "000.png", 11.0, None, 4),  # a false alarm to be
        ]
        for camera, path, score, kind, hours in alarms:
            image, heatmap = alarm_media(path, media / camera / path.parent.name, stored_map=camera == "cam1")
            at, line = now - timedelta(hours=hours), LINES[camera]
            rec = record(camera, f"{path.parent.name}_{path.name}", at, score, defect_type=kind, agent=line)
            ids[camera].append(store.record(replace(rec, image_path=image, heatmap_path=heatmap), [])[0])
        for i in range(20):
            camera = "cam1" if i % 2 else "cam2"
            rec = record(camera, f"ok_{i:03d}.png", now - timedelta(minutes=20 * i), 5.0 + i % 4, agent=LINES[camera])
            ids["normal"].append(store.record(rec, [])[0])
    finally:
        store.close()
    return ids


def app_test() -> AppTest:
    """The page under AppTest (the config comes from $LINEWATCH_REVIEW_CONFIG)."""
    return AppTest.from_file(str(APP), default_timeout=60)


def login(at: AppTest, name: str, password: str) -> AppTest:
    """Fill and submit the log-in form."""
    at.run()
    at.text_input(key="login_name").input(name)
    at.text_input(key="login_password").input(password)
    at.button(key="login_submit").click()
    return at.run()


def goto(at: AppTest, page: str) -> AppTest:
    """Switch the sidebar navigation to ``page``."""
    at.sidebar.radio(key="nav_page").set_value(page)
    return at.run()

"""A new bundle rolled out while frames keep arriving: swapped between two frames, announced on MQTT, every frame
scored exactly once; a corrupt bundle put in its place is refused and the running one goes on.

Real parts: the bottle int8 bundle (version 2 is the same model with another version and threshold in its
manifest, so its digest differs and its hashes verify), a folder camera, SQLite, a real mosquitto.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
import time
from pathlib import Path

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.rollout import point_link
from tests.harness import Subscriber, variant, wait_until
from tests.services import mosquitto  # noqa: F401


def point(link: Path, target: Path) -> None:
    """Swap a ``current`` link atomically, as an operator or the fleet fetcher does."""
    point_link(link, target.name)


class Feeder(threading.Thread):
    """Drops one real frame every ``gap`` seconds until ``total`` were written."""

    def __init__(self, images: list[Path], incoming: Path, total: int, gap: float, start: int = 0) -> None:
        super().__init__(daemon=True)
        self.images, self.incoming, self.total, self.gap, self.first = images, incoming, total, gap, start

    def run(self) -> None:
        for i in range(self.first, self.first + self.total):
            src = self.images[i % len(self.images)]
            part = self.incoming / f"f{i:04d}.png.part"
            shutil.copyfile(src, part)
            part.rename(part.with_suffix(""))
            time.sleep(self.gap)


def versions(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT frame_id, model_version FROM verdicts ORDER BY id").fetchall()


def test_bundle_swapped_while_frames_arrive_and_a_corrupt_one_refused(
    tmp_path, bottle_bundle, datasets_root, mosquitto, caplog
):
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    v1 = variant(bottle_bundle, bundles / "v1", "1")
    v2 = variant(bottle_bundle, bundles / "v2", "2", threshold_factor=1.5)
    current = bundles / "current"
    point(current, v1)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    cfg = AgentConfig.model_validate(
        {
            "agent": {"name": "ro", "data_dir": str(tmp_path / "data"), "bundle_poll_seconds": 0.2},
            "database": {"url": f"sqlite:///{tmp_path / 'agent.db'}"},
            "cameras": [
                {
                    "id": "cam1",
                    "bundle": str(current),
                    "source": {"type": "folder", "path": str(incoming), "stable_seconds": 0.05},
                }
            ],
            "mqtt": {"enabled": True, "host": mosquitto.host, "port": mosquitto.port, "prefix": "lw"},
            "metrics": {"enabled": False},
        }
    )
    models = Subscriber(mosquitto.host, mosquitto.port, "lw/ro/cameras/+/model")
    images = sorted((datasets_root / "mvtec_ad/bottle/test/good").glob("*.png"))
    agent = Agent(cfg)
    agent.start()
    try:
        feeder = Feeder(images, incoming, 40, gap=0.05)
        feeder.start()
        wait_until(lambda: len(versions(tmp_path / "agent.db")) >= 12, 60, "frames scored by version 1")
        point(current, v2)  # the roll-out, mid-stream
        feeder.join()
        wait_until(lambda: len(versions(tmp_path / "agent.db")) == 40, 60, "every frame")
        wait_until(lambda: agent.cameras[0].pipeline.active.version == "2", 10, "the swap")
        scored = versions(tmp_path / "agent.db")
        assert sorted(f for f, _ in scored) == [f"f{i:04d}.png" for i in range(40)]  # each exactly once
        order = [v for _, v in scored]
        first_v2 = order.index("2")
        assert order[:first_v2] == ["1"] * first_v2 and order[first_v2:] == ["2"] * (40 - first_v2)
        assert 12 <= first_v2 < 40
        wait_until(lambda: any(json.loads(m.payload)["version"] == "2" for m in models.received()), 10, "MQTT")
        announced = [json.loads(m.payload) for m in models.received()]
        assert announced[-1]["previous"]["version"] == "1" and announced[-1]["hash"] != announced[0]["hash"]

        # a corrupt bundle in its place: refused, version 2 goes on
        v3 = variant(bottle_bundle, bundles / "v3", "3")
        blob = bytearray((v3 / "scorer.tflite").read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        (v3 / "scorer.tflite").write_bytes(bytes(blob))
        with caplog.at_level(logging.ERROR, logger="edge_agent.rollout"):
            point(current, v3)
            wait_until(lambda: "refused" in caplog.text, 10, "the refusal")
        assert "SHA-256 of scorer.tflite" in caplog.text and "the running one goes on" in caplog.text
        more = Feeder(images, incoming, 5, gap=0.0, start=40)
        more.run()
        wait_until(lambda: len(versions(tmp_path / "agent.db")) == 45, 30, "frames after the refusal")
        assert [v for _, v in versions(tmp_path / "agent.db")[40:]] == ["2"] * 5
    finally:
        agent.stop()
        models.close()
    late = Subscriber(mosquitto.host, mosquitto.port, "lw/ro/cameras/cam1/model")  # a new subscriber
    wait_until(lambda: late.received(), 10, "the retained model message")
    assert late.received()[0].retain and json.loads(late.received()[0].payload)["version"] == "2"
    late.close()

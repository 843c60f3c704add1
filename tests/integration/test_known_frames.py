"""A frame the source vouches for (``Frame.is_new``) skips the pipeline's database look-up; any other frame is
looked up first, and a stored one is not scored again. Either way a frame keeps exactly one verdict."""

from __future__ import annotations

from datetime import UTC, datetime

from edge_agent.bundle import load_bundle
from edge_agent.config import CameraConfig
from edge_agent.inspector import Inspector
from edge_agent.pipeline import CameraPipeline, Outputs
from edge_agent.preprocess import read_image
from edge_agent.records import Frame
from edge_agent.store import Store


class CountingInspector(Inspector):
    """The real inspector, counting the frames it scores."""

    scored = 0

    def inspect(self, *args, **kwargs):
        self.scored += 1
        return super().inspect(*args, **kwargs)


def test_is_new_skips_the_lookup_and_a_duplicate_still_gets_no_second_verdict(tmp_path, bottle_bundle, datasets_root):
    path = datasets_root / "mvtec_ad/bottle/test/good/000.png"
    image = read_image(path)
    inspector = CountingInspector(load_bundle(bottle_bundle), threads=1)
    store = Store(f"sqlite:///{tmp_path / 'agent.db'}")
    cam = CameraConfig.model_validate({"id": "cam1", "bundle": "unused", "source": {"type": "folder", "path": "x"}})
    pipeline = CameraPipeline(cam, inspector, store, Outputs("it", None, None), tmp_path / "data")
    lookups: list[str] = []
    has_verdict = store.has_verdict

    def counted_lookup(camera: str, frame_id: str) -> bool:
        lookups.append(frame_id)
        return has_verdict(camera, frame_id)

    store.has_verdict = counted_lookup  # the real look-up, counted

    def frame(is_new: bool) -> Frame:
        return Frame("cam1", "folder", "f1", datetime.now(UTC), str(path), is_new=is_new)

    first = pipeline.process(frame(is_new=True), image)
    assert first is not None and inspector.scored == 1 and lookups == []
    assert pipeline.process(frame(is_new=False), image) is None  # looked up, known: not scored again
    assert inspector.scored == 1 and lookups == ["f1"]
    assert pipeline.process(frame(is_new=True), image) is None  # vouched for wrongly: scored, the store refuses it
    assert inspector.scored == 2 and lookups == ["f1"]
    assert store.counts(None) == {"cam1": {"frames": 1, "anomalies": int(first.anomalous)}}
    store.close()

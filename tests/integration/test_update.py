"""Update from feedback on real bottle images: a new batch of good parts under dimmer light alarms; a reviewer marks
ten of them false alarm, confirms two broken bottles and five bottles with a scratch (a type the bundle's type head
has never seen); ``linewatch-train update`` builds the next version without retraining the backbone.

Checked: the reviewed frames no longer alarm, other frames of the same new batch (never shown to the update) no
longer alarm, confirmed defects are still caught, the type head learned "scratch" (unseen scratched bottles get
that type; the old head could not name it), the original test split keeps its image AUROC and its types' macro F1,
and the new bundle verifies (the AUROC gate itself: ``tests/unit/test_update_bank.py``).
"""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from edge_agent.bundle import load_bundle
from edge_agent.inspector import Inspector
from training.cli import main as train_main
from training.synthetic import foreground_mask, scratch

DIM = 0.85  # the new batch: the same bottles, 15 % darker


def dimmed(path) -> np.ndarray:
    return np.clip(cv2.imread(str(path)).astype(np.float32) * DIM, 0, 255).astype(np.uint8)


def scratched(path, seed: int) -> np.ndarray:
    """A good bottle with a large synthetic scratch on the part (``training.synthetic``)."""
    image = cv2.imread(str(path))
    return scratch(image, True, np.random.default_rng(seed), foreground_mask(image))[0]


@pytest.fixture(scope="module")
def feedback(tmp_path_factory, datasets_root):
    """A review export: ten dimmed good frames marked false alarm, two broken bottles confirmed with their type,
    five scratched bottles confirmed as "scratch"; and the frames kept back (good, and five more scratched)."""
    folder = tmp_path_factory.mktemp("feedback")
    test = datasets_root / "mvtec_ad" / "bottle" / "test"
    goods = sorted(test.glob("good/*.png"))
    rows = []
    (folder / "good").mkdir()
    for path in goods[:10]:
        cv2.imwrite(str(folder / "good" / f"dim_{path.name}"), dimmed(path))
        rows.append({"file": f"good/dim_{path.name}", "label": "false_alarm", "defect_type": ""})
    (folder / "broken_large").mkdir()
    for path in sorted(test.glob("broken_large/*.png"))[:2]:
        (folder / "broken_large" / path.name).write_bytes(path.read_bytes())
        rows.append({"file": f"broken_large/{path.name}", "label": "defect", "defect_type": "broken_large"})
    (folder / "scratch").mkdir()
    trained_on = sorted((datasets_root / "mvtec_ad" / "bottle" / "train" / "good").glob("*.png"))
    for i, path in enumerate(trained_on[:5]):
        cv2.imwrite(str(folder / "scratch" / path.name), scratched(path, i))
        rows.append({"file": f"scratch/{path.name}", "label": "defect", "defect_type": "scratch"})
    with (folder / "labels.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "label", "defect_type"])
        writer.writeheader()
        writer.writerows(rows)
    return folder, goods[10:], [scratched(p, 100 + i) for i, p in enumerate(trained_on[5:10])]


def alarms(bundle, images) -> int:
    inspector = Inspector(load_bundle(bundle), threads=2)
    return sum(inspector.inspect(cv2.cvtColor(img, cv2.COLOR_BGR2RGB)).anomalous for img in images)


def types(bundle, images) -> list[str | None]:
    inspector = Inspector(load_bundle(bundle), threads=2)
    return [inspector.inspect(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), classify_all=True).defect_type for img in images]


def test_false_alarms_become_normal_without_retraining(tmp_path, bottle_bundle, bottle_config, feedback, capsys):
    folder, held_out, unseen_scratches = feedback
    out = tmp_path / "v2"
    args = ["update", "--config", str(bottle_config), "--bundle", str(bottle_bundle), "--feedback", str(folder)]
    assert train_main([*args, "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["false_alarms"] == 10 and report["confirmed_defects"] == {"broken_large": 2, "scratch": 5}
    assert report["false_alarms_still_alarming_before"] >= 8  # the new batch did alarm
    assert report["false_alarms_still_alarming_after"] == 0
    assert report["confirmed_defects_caught_after"] == 7
    assert report["test_auroc_after"] >= report["test_auroc_before"] - 0.01
    assert report["test_false_alarm_rate_after"] <= 0.05
    assert report["bank_rows_added"] > 0
    new = load_bundle(out)  # hashes and typed manifest verify
    old = load_bundle(bottle_bundle)
    assert new.digest != old.digest and new.manifest.metrics["update"]["parent_version"] == old.version
    assert new.models["scorer"].params.bank_size == report["bank_rows"]
    # frames of the same new batch the update never saw
    unseen = [dimmed(p) for p in held_out]
    assert alarms(bottle_bundle, unseen) >= 8
    assert alarms(out, unseen) <= 2
    assert alarms(out, [cv2.imread(str(p)) for p in held_out]) == 0  # under the usual light: still normal
    # the defect types: "scratch" became a class; the test split's types did not get worse
    assert report["type_head"] == "re-fitted", report["type_head"]
    assert report["type_head_classes_after"] == ["broken_large", "broken_small", "contamination", "scratch"]
    assert new.models["classifier"].class_names == report["type_head_classes_after"]
    assert report["feedback_types_correct_before"] <= 2  # the old head cannot name a scratch
    assert report["feedback_types_correct_after_loo"] > report["feedback_types_correct_before"]
    assert report["types_macro_f1_cv_after"] >= report["types_macro_f1_cv_before"] - 0.05
    named = types(out, unseen_scratches)
    assert named.count("scratch") >= 2, named  # five examples of a new type: a start, not a solved type
    assert "scratch" not in types(bottle_bundle, unseen_scratches)
    print(f"update: {report}; unseen scratches typed {named}")

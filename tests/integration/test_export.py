"""int8 export of a real bottle run: parity gate, bundle verification, edge inference without TensorFlow."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.bundle import FORMAT_VERSION, load_bundle
from edge_agent.errors import BundleError
from edge_agent.inspector import Inspector
from edge_agent.nn_index import DEFAULT_PROBE
from model_export.cli import main as export_main

REPO = Path(__file__).resolve().parents[2]


def test_int8_scorer_keeps_float_quality(bottle_bundle):
    manifest = json.loads((bottle_bundle / "manifest.json").read_text())
    figures = manifest["metrics"]["scorer"]
    assert figures["auroc_export"] >= figures["auroc_float"] - 0.01
    assert figures["auroc_export"] >= 0.99
    assert figures["map_correlation"] >= 0.9
    assert figures["size_export_bytes"] < figures["size_float_bytes"] / 2
    scorer = manifest["models"]["scorer"]
    assert scorer["input"]["dtype"] == "int8" and scorer["input"]["scale"] > 0
    assert [o["shape"] for o in scorer["outputs"]] == [[1, 28, 28, 40], [1, 14, 14, 112]]  # the patch taps only
    assert scorer["calibration"]["threshold"] > scorer["calibration"]["center"]


def test_int8_bank_is_built_from_the_int8_features(bottle_bundle, bottle_run):
    bank = np.load(bottle_bundle / "memory_bank.npy")
    float_bank = np.load(bottle_run / "patchcore" / "memory_bank.npy")
    manifest = json.loads((bottle_bundle / "manifest.json").read_text())
    assert manifest["models"]["scorer"]["params"]["bank_size"] == len(bank) == len(float_bank)
    assert manifest["models"]["scorer"]["params"]["search_probe"] == DEFAULT_PROBE  # calibrated with it
    assert bank.dtype == np.float32 and not np.array_equal(bank, float_bank)
    # the session's run whitens its bank (tests/conftest.py): export fits the whitening again on the int8 features
    assert manifest["models"]["scorer"]["params"]["whitening"] == "whitening.npy"
    whitening = np.load(bottle_bundle / "whitening.npy")
    float_whitening = np.load(bottle_run / "patchcore" / "whitening.npy")
    assert whitening.shape == float_whitening.shape == (bank.shape[1], bank.shape[1])
    assert not np.array_equal(whitening, float_whitening)
    assert "whitening.npy" in manifest["files"]
    index = Inspector(load_bundle(bottle_bundle)).scorer.index  # type: ignore[attr-defined]
    np.testing.assert_array_equal(index.whitening, whitening)  # the agent searches the whitened space


def test_failed_gate_writes_no_bundle(bottle_run, bottle_config, tmp_path, capsys):
    """The same gate and staging as PatchCore's, on the run's small autoencoder (64 px: a quick conversion)."""
    out = tmp_path / "never"
    args = ["--config", str(bottle_config), "--run", str(bottle_run), "--out", str(out), "--classifier", ""]
    assert export_main([*args, "--scorer", "autoencoder", "--max-auroc-drop", "-0.5"]) == 3
    assert not out.exists() and not list(tmp_path.iterdir())
    err = capsys.readouterr().err
    assert "autoencoder int8: image AUROC" in err and "exceeds the gate" in err


def test_bundle_refuses_tampering(bottle_bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(bottle_bundle, copy)
    assert load_bundle(copy).models["scorer"].kind == "patchcore"
    bank = copy / "memory_bank.npy"
    bank.write_bytes(bank.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(BundleError, match=r"SHA-256 of memory_bank\.npy"):
        load_bundle(copy)
    shutil.copy(bottle_bundle / "memory_bank.npy", bank)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format version 99 is not supported"):
        load_bundle(copy)
    manifest["format_version"] = 2  # the untyped format before this contract
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"format version 2 is not supported .* re-export it"):
        load_bundle(copy)
    (copy / "scorer.tflite").unlink()
    manifest["format_version"] = FORMAT_VERSION
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"scorer\.tflite listed in the manifest is missing"):
        load_bundle(copy)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda m: m["models"]["scorer"]["params"].pop("pool"), r"models\.scorer: .*params\.pool: Field required"),
        (lambda m: m["models"]["scorer"]["params"].update(blur_sigma="wide"), r"params\.blur_sigma: Input should be"),
        (lambda m: m["models"]["scorer"]["params"].pop("patch_taps"), r"params\.patch_taps: Field required"),
        (lambda m: m["models"]["scorer"]["calibration"].pop("threshold"), r"calibration\.threshold: Field required"),
        (lambda m: m["models"]["scorer"]["preprocess"].pop("scale"), r"models\.scorer\.preprocess: .*missing scale"),
        (lambda m: m["models"]["scorer"].update(precision="int4"), r"models\.scorer\.precision"),
        (lambda m: m["models"]["scorer"].update(colour="red"), r"models\.scorer\.colour: Extra inputs"),
        (lambda m: m["data"].pop("train_images"), r"data\.train_images: Field required"),
    ],
    ids=["missing-pool", "mistyped-sigma", "missing-taps", "calibration", "preprocess", "precision", "extra", "data"],
)
def test_manifest_field_missing_or_mistyped_is_refused(bottle_bundle, tmp_path, change, key):
    """No defaults at the reader: the bundle is refused, naming its path and the key."""
    copy = tmp_path / "copy"
    shutil.copytree(bottle_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    change(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError) as err:
        load_bundle(copy)
    assert f"bundle {copy}" in str(err.value)
    assert re.search(key, str(err.value)), str(err.value)


EDGE_PROBE = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"tensorflow", "keras", "training", "tf_keras"}:
            raise ImportError(f"blocked on the edge: {name}")
sys.meta_path.insert(0, Block())
from edge_agent.bundle import load_bundle
from edge_agent.inspector import Inspector
from edge_agent.preprocess import read_image
inspector = Inspector(load_bundle(sys.argv[1]))
for i, path in enumerate(sys.argv[2:]):
    r = inspector.inspect(read_image(path))
    print(f"image{i}", r.anomalous, round(r.normalised_score, 3), r.anomaly_map.shape)
print("backend", inspector.scorer.model.backend)
"""


def test_edge_inference_runs_without_tensorflow(bottle_bundle, datasets_root):
    good = datasets_root / "mvtec_ad/bottle/test/good/000.png"
    broken = datasets_root / "mvtec_ad/bottle/test/broken_large/000.png"
    out = subprocess.run(
        [sys.executable, "-c", EDGE_PROBE, str(bottle_bundle), str(good), str(broken)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert lines["backend"] == "ai_edge_litert"
    assert lines["image0"].startswith("False") and lines["image1"].startswith("True")
    assert "(224, 224)" in lines["image1"]


@pytest.fixture(scope="module")
def run_with_classifier(bottle_run, bottle_config, tmp_path_factory):
    """The session's bottle run plus a briefly trained transfer classifier (2 folds, 2 epochs, no augmentation)."""
    from training.config import ClassifierConfig, load_train_config
    from training.data import load_dataset
    from training.train_classifier import train_and_save

    run = tmp_path_factory.mktemp("with-classifier") / "run"
    shutil.copytree(bottle_run / "patchcore", run / "patchcore")
    splits = load_dataset(load_train_config(bottle_config).dataset)
    cfg = ClassifierConfig(size=224, epochs=2, batch_size=16, folds=2, patience=2)
    train_and_save("transfer", splits, cfg, run / "classifier-transfer")
    return run


def _export(run: Path, config: Path, out: Path, *extra: str) -> dict:
    args = ["--config", str(config), "--run", str(run), "--out", str(out), "--min-agreement", "0.8", *extra]
    assert export_main(args) == 0
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def shared_bundle(run_with_classifier, bottle_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("shared") / "bundle"
    _export(run_with_classifier, bottle_config, out)
    return out


def test_classifier_shares_the_backbone_graph(
    run_with_classifier, shared_bundle, bottle_config, datasets_root, tmp_path
):
    import keras

    from edge_agent.inspector import Inspector
    from edge_agent.preprocess import normalise, prepare, read_image

    shared = json.loads((shared_bundle / "manifest.json").read_text())
    assert shared["format_version"] == FORMAT_VERSION
    entry = shared["models"]["classifier"]
    assert entry["shares_graph_of"] == "scorer" and entry["file"] == "scorer.tflite"
    assert "classifier.tflite" not in shared["files"]
    assert [o["shape"] for o in shared["models"]["scorer"]["outputs"]] == [[1, 28, 28, 40], [1, 14, 14, 112], [1, 4]]
    figures = shared["metrics"]
    assert figures["scorer"]["auroc_export"] >= figures["scorer"]["auroc_float"] - 0.01
    assert figures["classifier"]["top1_agreement"] >= 0.8

    separate = _export(run_with_classifier, bottle_config, tmp_path / "separate", "--separate-graphs")
    assert separate["models"]["classifier"]["file"] == "classifier.tflite"
    assert separate["models"]["classifier"]["shares_graph_of"] is None

    float_model = keras.models.load_model(run_with_classifier / "classifier-transfer" / "model.keras")
    one, two = Inspector(load_bundle(shared_bundle)), Inspector(load_bundle(tmp_path / "separate"))
    assert one.classifier is not None and one.classifier.model is None  # no second graph loaded
    for path in sorted((datasets_root / "mvtec_ad/bottle/test").glob("*/00[0-2].png")):
        image = read_image(path)
        a, b = one.inspect(image, classify_all=True), two.inspect(image, classify_all=True)
        spec = one.classifier.entry.preprocess
        reference = float_model.predict(normalise(prepare(image, spec)[None], spec), verbose=0)[0]
        assert a.type_probabilities is not None and b.type_probabilities is not None
        assert a.type_probabilities.sum() == pytest.approx(1.0)
        assert np.abs(a.type_probabilities - reference).max() < 0.15, path
        assert np.abs(b.type_probabilities - reference).max() < 0.15, path
        assert a.anomalous == b.anomalous, path


def test_a_shared_head_must_match_the_class_list(shared_bundle, tmp_path):
    from edge_agent.inspector import Inspector

    shutil.copytree(shared_bundle, tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    manifest["models"]["classifier"]["class_names"].append("extra")
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="no 5-class head output"):
        Inspector(load_bundle(tmp_path / "b"))
    manifest["models"]["classifier"]["shares_graph_of"] = "nothing"
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="shares the graph of 'nothing'"):
        load_bundle(tmp_path / "b")


def test_type_head_reads_the_scorer_graph(bottle_run, bottle_bundle, datasets_root, tmp_path):
    """The session's bundle: its classifier ("auto") is the type head fitted on the run's PatchCore (2 folds)."""
    from edge_agent.inspector import Inspector
    from edge_agent.preprocess import read_image

    metrics = json.loads((bottle_run / "type-head" / "metrics.json").read_text())
    # what the line sees (good below the threshold, else the head's type), out of fold; 224 px, 2 folds here
    assert metrics["class_names"] == ["good", "broken_large", "broken_small", "contamination"]
    assert np.array(metrics["confusion_matrix"]).sum() == 83
    assert metrics["macro_f1"] >= 0.75, metrics["macro_f1"]
    manifest = json.loads((bottle_bundle / "manifest.json").read_text())
    entry, scorer = manifest["models"]["classifier"], manifest["models"]["scorer"]
    assert entry["kind"] == "type_head" and entry["shares_graph_of"] == "scorer"
    assert entry["class_names"] == ["broken_large", "broken_small", "contamination"]
    assert "type_head.npz" in manifest["files"] and "classifier.tflite" not in manifest["files"]
    # every frame runs the scorer graph to its last patch tap; the type tail (to stride 32) only when asked
    assert [o["shape"] for o in scorer["outputs"]] == [[1, 28, 28, 40], [1, 14, 14, 112]]
    assert scorer["params"]["patch_taps"] == 2 and scorer["params"]["type_tail"] == "type_tail.tflite"
    assert "type_tail.tflite" in manifest["files"] and [o["shape"] for o in entry["outputs"]] == [[1, 7, 7, 320]]
    assert manifest["metrics"]["classifier"]["top1_agreement"] >= 0.9
    assert manifest["metrics"]["scorer"]["auroc_export"] >= manifest["metrics"]["scorer"]["auroc_float"] - 0.01

    inspector = Inspector(load_bundle(bottle_bundle))
    hits = 0
    for path in sorted((datasets_root / "mvtec_ad/bottle/test").glob("*/00[0-3].png")):
        result = inspector.inspect(read_image(path), classify_all=True)
        assert result.type_probabilities is not None and result.type_probabilities.sum() == pytest.approx(1.0)
        assert result.anomalous == (path.parent.name != "good"), path
        hits += result.defect_type == path.parent.name
    assert hits >= 10  # of 12 defective images (the head saw them in training: a wiring check, not a figure)

    class CountingTail:
        def __init__(self, model):
            self.model, self.calls = model, 0

        def __call__(self, x):
            self.calls += 1
            return self.model(x)

    inspector.scorer.tail = tail = CountingTail(inspector.scorer.tail)
    good, broken = (read_image(datasets_root / f"mvtec_ad/bottle/test/{k}/000.png") for k in ("good", "broken_large"))
    assert not inspector.inspect(good).anomalous and tail.calls == 0  # a normal frame never runs the tail
    assert inspector.inspect(broken).defect_type is not None and tail.calls == 1
    assert inspector.inspect(good, classify_all=True).defect_type is not None and tail.calls == 2

    shutil.copytree(bottle_bundle, tmp_path / "wrong-tail")
    wrong = json.loads(json.dumps(manifest))
    wrong["models"]["scorer"]["params"]["type_tail"] = "scorer.tflite"  # hashed, but it reads images, not the tap
    (tmp_path / "wrong-tail" / "manifest.json").write_text(json.dumps(wrong))
    with pytest.raises(BundleError, match=r"scorer\.tflite: input \[1, 224, 224, 3\] is not the last patch tap"):
        Inspector(load_bundle(tmp_path / "wrong-tail"))
    del wrong["files"]["type_tail.tflite"]
    wrong["models"]["scorer"]["params"]["type_tail"] = "type_tail.tflite"
    (tmp_path / "wrong-tail" / "manifest.json").write_text(json.dumps(wrong))
    with pytest.raises(BundleError, match=r"type_tail\.tflite is not covered by a hash"):
        load_bundle(tmp_path / "wrong-tail")

    shutil.copytree(bottle_bundle, tmp_path / "renamed")
    manifest["models"]["classifier"]["class_names"][0] = "dent"
    (tmp_path / "renamed" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="classes"):
        Inspector(load_bundle(tmp_path / "renamed"))


def test_a_type_head_on_the_last_patch_tap_runs_no_tail(bottle_run, bottle_config, datasets_root, tmp_path):
    """A head whose deeper map is the scorer's last patch tap (tire's choice): no tail graph, no deeper output."""
    from edge_agent.preprocess import read_image
    from training.config import load_train_config
    from training.data import load_dataset
    from training.type_head import LAST_PATCH_TAP, train_type_head

    run = tmp_path / "run"
    shutil.copytree(bottle_run / "patchcore", run / "patchcore")
    splits = load_dataset(load_train_config(bottle_config).dataset)
    result = train_type_head(splits, run / "patchcore", run / "type-head", folds=2, deep_taps=(LAST_PATCH_TAP,))
    assert result is not None and result["deep_tap"] == LAST_PATCH_TAP
    assert list(result["deep_tap_candidates"]) == [LAST_PATCH_TAP] and result["macro_f1"] >= 0.6
    out = tmp_path / "bundle"
    assert export_main(["--config", str(bottle_config), "--run", str(run), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    scorer, entry = manifest["models"]["scorer"], manifest["models"]["classifier"]
    assert scorer["params"]["type_reads_last_tap"] is True and scorer["params"].get("type_tail") is None
    assert "type_tail.tflite" not in manifest["files"] and entry["kind"] == "type_head"
    assert [o["shape"] for o in scorer["outputs"]] == [[1, 28, 28, 40], [1, 14, 14, 112]]
    assert [o["shape"] for o in entry["outputs"]] == [[1, 14, 14, 112]]  # the head pools the last patch tap
    inspector = Inspector(load_bundle(out))
    assert inspector.scorer.tail is None
    hits = 0
    for path in sorted((datasets_root / "mvtec_ad/bottle/test").glob("*/00[0-3].png")):
        found = inspector.inspect(read_image(path), classify_all=True)
        assert found.type_probabilities is not None and found.type_probabilities.sum() == pytest.approx(1.0)
        hits += found.defect_type == path.parent.name
    assert hits >= 8  # of 12 defective images the head saw in training: a wiring check, not a figure
    # the feedback update reads the same features: the last patch tap as the deeper map
    from edge_agent.preprocess import prepare
    from training.update import BankScorer

    scorer = BankScorer(load_bundle(out))
    paths = sorted((datasets_root / "mvtec_ad/bottle/test/broken_large").glob("00[0-2].png"))
    patches, grid, deep = scorer.patches(np.stack([prepare(read_image(p), scorer.spec) for p in paths]), True)
    features = scorer.type_features(patches, deep, grid, scorer.bank)
    assert inspector.classifier is not None and features.shape == (3, inspector.classifier.input_width)


def test_the_input_table_gives_the_float_path_s_tensor_and_outputs(bottle_bundle, datasets_root):
    """The agent feeds the int8 graph through a 256-entry table of the shared normalisation; the tensor and the
    feature maps must be those of normalising in float32 and quantising, for real frames and every pixel value."""
    from edge_agent.inspector import graph_input
    from edge_agent.preprocess import normalise, prepare, read_image

    inspector = Inspector(load_bundle(bottle_bundle), threads=1)
    scorer = inspector.scorer
    model, spec = scorer.model, scorer.entry.preprocess
    assert model.input.quantised
    every_value = np.arange(256 * 3, dtype=np.uint8).reshape(16, 16, 3)
    frames = [
        read_image(datasets_root / f"mvtec_ad/bottle/test/{name}") for name in ("good/000.png", "broken_small/000.png")
    ]
    for prepared in [every_value, *(prepare(frame, spec) for frame in frames)]:
        looked_up = graph_input(model, prepared, spec)
        assert looked_up.dtype == np.int8 and looked_up.shape == (1, *prepared.shape)
        np.testing.assert_array_equal(looked_up, model.quantise_input(normalise(prepared[None], spec)))
    prepared = prepare(frames[1], spec)
    for table_out, float_out in zip(
        model.run(graph_input(model, prepared, spec)), model(normalise(prepared[None], spec)), strict=True
    ):
        np.testing.assert_array_equal(table_out, float_out)

"""Defect-type classifier: model shapes, stratified folds, class weights, and tiny trainings on real bottle images."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

import training.train_classifier as train_classifier_module
from edge_agent.preprocess import normalise
from training.artifacts import read_json
from training.config import AugmentConfig, ClassifierConfig, DatasetConfig
from training.data import NORMAL, DatasetSplits, load_dataset, load_images
from training.models.classifier import (
    build_custom_cnn,
    build_transfer_classifier,
    split_transfer_classifier,
    trainable_layer_names,
)
from training.train_classifier import (
    class_weights,
    cross_validate,
    preprocess_spec,
    stratified_folds,
    stratified_holdout,
    train_and_save,
    train_classifier,
)

AUGMENT = AugmentConfig(hflip=True, vflip=True, rotate_deg=180)
TINY = ClassifierConfig(size=64, epochs=2, batch_size=8, folds=2, patience=2, augment=AUGMENT)


@pytest.fixture(scope="module")
def bottle(datasets_root) -> DatasetSplits:
    root = datasets_root / "mvtec_ad" / "bottle"
    return load_dataset(DatasetConfig(name="bottle", layout="mvtec", root=str(root)))


@pytest.fixture(scope="module")
def class_names(bottle: DatasetSplits) -> list[str]:
    return [NORMAL, *bottle.defect_types]


@pytest.fixture(scope="module")
def bottle_labels(bottle: DatasetSplits, class_names: list[str]) -> np.ndarray:
    return np.array([class_names.index(s.defect_type) for s in bottle.test])


def _subset(bottle: DatasetSplits, class_names: list[str], per_class: int) -> list:
    """The first ``per_class`` test samples of every class."""
    return [s for c in class_names for s in [t for t in bottle.test if t.defect_type == c][:per_class]]


@pytest.fixture(scope="module")
def tiny_set(bottle: DatasetSplits, class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """4 images per class of bottle's test split at 64 px, uint8."""
    samples = _subset(bottle, class_names, 4)
    images, kept = load_images(samples, preprocess_spec("custom", 64))
    assert len(kept) == len(samples)
    return images, np.array([class_names.index(s.defect_type) for s in kept])


def test_bottle_has_four_classes(class_names: list[str], bottle_labels: np.ndarray) -> None:
    assert class_names == ["good", "broken_large", "broken_small", "contamination"]
    assert np.bincount(bottle_labels).tolist() == [20, 20, 22, 21]


def test_custom_cnn_outputs_softmax(tiny_set: tuple[np.ndarray, np.ndarray]) -> None:
    images, _ = tiny_set
    model = build_custom_cnn(64, 3, 4)
    probs = model.predict(normalise(images, preprocess_spec("custom", 64)), verbose=0)
    assert probs.shape == (len(images), 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert build_custom_cnn(224, 1, 3).output.shape[-1] == 3


def test_custom_cnn_uses_bounded_activations() -> None:
    relus = [layer for layer in build_custom_cnn(64, 3, 4).layers if isinstance(layer, keras.layers.ReLU)]
    assert relus and all(float(layer.max_value) == 6.0 for layer in relus)


@pytest.mark.slow
def test_transfer_classifier_shape_freezing_and_split(bottle: DatasetSplits) -> None:
    spec = preprocess_spec("transfer", 224)
    assert (spec.offset, spec.scale) == (127.0, 128.0)
    images, _ = load_images(bottle.test[:2], spec)
    model = build_transfer_classifier(4, input_size=224)
    x = normalise(images, spec)
    probs = model.predict(x, verbose=0)
    assert probs.shape == (2, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    expected = ["block7a_expand_conv", "block7a_dwconv", "block7a_project_conv", "top_conv", "classifier_dense"]
    assert trainable_layer_names(model) == expected
    frozen, head = split_transfer_classifier(model)
    assert frozen.output.shape[1:] == (7, 7, 192)
    np.testing.assert_allclose(head.predict(frozen.predict(x, verbose=0), verbose=0), probs, atol=1e-5)


def test_stratified_folds_cover_once_and_keep_proportions(bottle_labels: np.ndarray) -> None:
    k = 5
    folds = stratified_folds(bottle_labels, k, seed=3)
    assert len(folds) == k
    everything = np.concatenate(folds)
    assert sorted(everything.tolist()) == list(range(len(bottle_labels)))
    counts = np.bincount(bottle_labels)
    for fold in folds:
        per_class = np.bincount(bottle_labels[fold], minlength=len(counts))
        assert np.all(np.abs(per_class - counts / k) < 1.0)
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    again = stratified_folds(bottle_labels, k, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(folds, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(folds, stratified_folds(bottle_labels, k, 4), strict=True))


def test_stratified_holdout_takes_every_class(bottle_labels: np.ndarray) -> None:
    keep, held = stratified_holdout(bottle_labels, 0.15, seed=0)
    assert np.intersect1d(keep, held).size == 0
    assert len(keep) + len(held) == len(bottle_labels)
    assert np.bincount(bottle_labels[held]).tolist() == [3, 3, 3, 3]


def test_class_weights_inverse_frequency_mean_one() -> None:
    labels = np.array([0] * 30 + [1] * 10 + [2] * 20)
    w = class_weights(labels, 4)
    assert w[3] == 0.0
    np.testing.assert_allclose(w[1] / w[0], 3.0, rtol=1e-6)
    np.testing.assert_allclose(w[labels].mean(), 1.0, rtol=1e-6)


@pytest.mark.slow
def test_tiny_custom_cross_validation(tiny_set: tuple[np.ndarray, np.ndarray], class_names: list[str]) -> None:
    images, labels = tiny_set
    result = cross_validate("custom", images, labels, class_names, TINY, seed=0)
    cm = np.array(result["confusion_matrix"])
    assert cm.shape == (4, 4) and cm.sum() == len(labels)
    assert np.array_equal(cm.sum(axis=1), np.bincount(labels))
    assert 0.0 <= result["macro_f1"] <= 1.0
    assert set(result["per_class_f1"]) == set(class_names)
    assert result["kind"] == "custom" and result["folds"] == 2


@pytest.mark.slow
def test_tiny_transfer_cross_validation(
    tiny_set: tuple[np.ndarray, np.ndarray], class_names: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train_classifier_module, "AUG_COPIES", 2)
    images, labels = tiny_set
    result = cross_validate("transfer", images, labels, class_names, TINY, seed=0)
    assert np.array(result["confusion_matrix"]).shape == (4, 4)
    assert 0.0 <= result["accuracy"] <= 1.0


@pytest.mark.slow
def test_train_classifier_with_validation_writes_logs(tiny_set: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    images, labels = tiny_set
    model = train_classifier(
        "custom", images[::2], labels[::2], ["a", "b", "c", "d"], TINY, tmp_path, 0, images[1::2], labels[1::2]
    )
    assert model.output.shape[-1] == 4
    assert (tmp_path / "checkpoints" / "best.keras").is_file()
    assert any((tmp_path / "logs").rglob("*"))


@pytest.mark.slow
def test_train_and_save_writes_model_folder(bottle: DatasetSplits, class_names: list[str], tmp_path: Path) -> None:
    small = DatasetSplits(bottle.name, bottle.layout, bottle.train, bottle.validation, _subset(bottle, class_names, 3))
    metrics = train_and_save("custom", small, TINY, tmp_path / "clf")
    folder = tmp_path / "clf"
    assert (folder / "model.keras").is_file()
    meta = read_json(folder / "meta.json")
    assert meta["kind"] == "classifier" and meta["name"] == "bottle-classifier-custom"
    assert read_json(folder / "calibration.json") == {"class_names": class_names}
    assert read_json(folder / "metrics.json")["confusion_matrix"] == metrics["confusion_matrix"]
    assert read_json(folder / "preprocess.json")["scale"] == 255.0
    reloaded = keras.saving.load_model(folder / "model.keras")
    assert reloaded.output.shape[-1] == 4

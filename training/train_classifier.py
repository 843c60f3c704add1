"""Train and cross-validate the defect-type classifier (class 0 = normal, then one class per defect type).

Evaluation: the only labelled defects of a data set are in its TEST split, so the classifier is trained and
evaluated on the test split's images (normal + defective) with stratified K-fold cross-validation; the
out-of-fold predictions give the reported figures (macro F1, per-class F1, confusion matrix). There is no
separate labelled defect set. The shipped model is then trained on all of those images.

Speed on a small CPU: the transfer model's base is frozen up to ``stage6`` (see
:mod:`training.models.classifier`), so its ``stage6`` features are computed once for every image, un-augmented
and in ``AUG_COPIES`` augmented copies; training then only runs the trainable head, drawing one copy per image and
epoch. The custom CNN is augmented on the fly with :func:`training.augment.augment_batch`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import keras
import numpy as np

from edge_agent.preprocess import PreprocessSpec, normalise
from training.artifacts import finalise_model_folder
from training.augment import augment_batch, is_identity
from training.config import AugmentConfig, ClassifierConfig
from training.data import NORMAL, DatasetSplits, load_images
from training.metrics import confusion_matrix, macro_f1, per_class_f1
from training.models.classifier import (
    CUSTOM_NORMALISATION,
    TRANSFER_NORMALISATION,
    build_custom_cnn,
    build_transfer_classifier,
    copy_backbone_weights,
    split_transfer_classifier,
)

log = logging.getLogger(__name__)

Kind = Literal["custom", "transfer"]
#: Augmented copies of every image whose frozen features are cached for the transfer model.
AUG_COPIES = 10
#: Fraction of each class of a fold's training part held out for early stopping.
VAL_FRACTION = 0.15
BACKBONE_WEIGHTS = "imagenet"
#: Epochs before early stopping watches the custom CNN: trained from scratch, its inference-mode (BatchNorm
#: moving statistics) validation loss is meaningless until the weights settle.
CUSTOM_WARMUP_EPOCHS = 10


def preprocess_spec(kind: Kind, size: int) -> PreprocessSpec:
    """Pre-processing of the classifier ``kind``: RGB, stretch resize, the model's own normalisation."""
    offset, scale = TRANSFER_NORMALISATION if kind == "transfer" else CUSTOM_NORMALISATION
    return PreprocessSpec(size=size, color="rgb", resize="stretch").with_normalisation(offset, scale)


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Inverse-frequency class weights normalised so that the mean weight over the samples is 1."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    present = max(1, int((counts > 0).sum()))
    return np.where(counts > 0, len(labels) / (present * np.maximum(counts, 1)), 0.0).astype(np.float32)


def stratified_folds(labels: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """Held-out indices of ``k`` stratified folds: each class shuffled (seeded) and dealt round-robin."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(labels), np.int64)
    start = 0
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        if len(members) < k:
            log.warning("class %d has %d samples, fewer than %d folds", cls, len(members), k)
        assignment[members] = (start + np.arange(len(members))) % k
        start += len(members)
    return [np.flatnonzero(assignment == f) for f in range(k)]


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(keep, held_out) positions: ``fraction`` of each class (at least 1 of classes with >= 2) held out."""
    rng = np.random.default_rng(seed)
    held = []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n = max(1, round(fraction * len(members))) if len(members) >= 2 else 0
        held.extend(members[:n].tolist())
    held_arr = np.sort(np.asarray(held, np.int64))
    return np.setdiff1d(np.arange(len(labels)), held_arr), held_arr


@dataclass
class _Source:
    """Everything the trainable part of a model is fed from, for all N samples."""

    kind: Kind
    spec: PreprocessSpec
    augment: AugmentConfig
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,)
    n_classes: int
    bank: np.ndarray | None = None  # transfer: (1 + copies, N, h, w, c) stage6 features; [0] un-augmented
    reference: keras.Model | None = None  # transfer: untrained model whose frozen part computed ``bank``

    def clean(self, idx: np.ndarray) -> np.ndarray:
        """Un-augmented input of the trainable part."""
        return self.bank[0, idx] if self.bank is not None else normalise(self.images[idx], self.spec)

    def augmented(self, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augmented input of the trainable part (transfer: a random cached copy per sample)."""
        if self.bank is not None:
            return self.bank[rng.integers(0, len(self.bank), len(idx)), idx]
        return normalise(augment_batch(self.images[idx], self.augment, rng), self.spec)


def _make_source(
    kind: Kind, images: np.ndarray, labels: np.ndarray, n_classes: int, cfg: ClassifierConfig, seed: int
) -> _Source:
    """Wrap the images; for the transfer model compute the frozen features of every copy once."""
    labels = np.asarray(labels, np.int64)
    source = _Source(kind, preprocess_spec(kind, images.shape[1]), cfg.augment, images, labels, n_classes)
    if kind == "custom":
        return source
    reference = build_transfer_classifier(n_classes, images.shape[1], BACKBONE_WEIGHTS)
    frozen, _ = split_transfer_classifier(reference)
    rng = np.random.default_rng(seed)
    copies = 0 if is_identity(cfg.augment) else AUG_COPIES
    t0 = time.perf_counter()
    bank = [frozen.predict(normalise(images, source.spec), batch_size=32, verbose=0)]
    for _ in range(copies):
        aug = normalise(augment_batch(images, cfg.augment, rng), source.spec)
        bank.append(frozen.predict(aug, batch_size=32, verbose=0))
    source.bank, source.reference = np.stack(bank), reference
    log.info("cached stage6 features: %d images x %d copies, %.1f s", len(images), 1 + copies, time.perf_counter() - t0)
    return source


class _Batches(keras.utils.PyDataset):
    """Shuffled (x, y, sample weight) batches, re-augmented every epoch."""

    def __init__(self, source: _Source, idx: np.ndarray, weights: np.ndarray, batch: int, seed: int) -> None:
        super().__init__()
        self.source, self.idx, self.weights, self.batch = source, idx, weights, batch
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(idx))

    def __len__(self) -> int:
        return int(np.ceil(len(self.idx) / self.batch))

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        picked = self.idx[self.order[i * self.batch : (i + 1) * self.batch]]
        y = self.source.labels[picked]
        return self.source.augmented(picked, self.rng), y, self.weights[y]

    def on_epoch_end(self) -> None:
        """Reshuffle."""
        self.order = self.rng.permutation(len(self.idx))


def _fit(
    source: _Source, train: np.ndarray, val: np.ndarray | None, cfg: ClassifierConfig, out_dir: Path | None, seed: int
) -> tuple[keras.Model, int]:
    """Train a fresh model on samples ``train`` (early stopping on ``val``); returns (model, best epoch 1-based)."""
    keras.utils.set_random_seed(seed)
    size, channels = source.images.shape[1], source.images.shape[3]
    if source.kind == "transfer":
        model = build_transfer_classifier(source.n_classes, size, backbone_weights=None)
        copy_backbone_weights(source.reference, model)
        _, fit_model = split_transfer_classifier(model)
        lr = cfg.learning_rate
    else:
        model = fit_model = build_custom_cnn(size, channels, source.n_classes)
        lr = cfg.custom_learning_rate
    fit_model.compile(keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    batches = _Batches(source, train, class_weights(source.labels[train], source.n_classes), cfg.batch_size, seed)
    has_val = val is not None and len(val) > 0
    validation = (source.clean(val), source.labels[val]) if has_val else None
    monitor = "val_loss" if has_val else "loss"
    warmup = min(CUSTOM_WARMUP_EPOCHS, cfg.epochs // 2) if source.kind == "custom" else 0
    stopper = keras.callbacks.EarlyStopping(
        monitor, patience=cfg.patience, restore_best_weights=True, start_from_epoch=warmup
    )
    callbacks: list[keras.callbacks.Callback] = [stopper]
    if out_dir is not None:
        ckpt = out_dir / "checkpoints" / "best.keras"
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        callbacks += [
            _FullModelCheckpoint(model, str(ckpt), monitor=monitor, save_best_only=True),
            keras.callbacks.TensorBoard(str(out_dir / "logs")),
        ]
    history = fit_model.fit(batches, validation_data=validation, epochs=cfg.epochs, callbacks=callbacks, verbose=0)
    log.info(
        "%s: %d epochs, best %d (%s %s)", source.kind, len(history.epoch), stopper.best_epoch + 1, monitor, stopper.best
    )
    return model, stopper.best_epoch + 1


class _FullModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint that saves the full classifier while only its head is being fitted."""

    def __init__(self, full_model: keras.Model, filepath: str, **kwargs: Any) -> None:
        super().__init__(filepath, **kwargs)
        self._full = full_model

    def set_model(self, model: keras.Model) -> None:
        """Always point at the full model."""
        super().set_model(self._full)


def _predict(model: keras.Model, source: _Source, idx: np.ndarray) -> np.ndarray:
    """Class probabilities of the samples ``idx`` (transfer: from the cached clean features)."""
    if source.kind == "transfer":
        _, head = split_transfer_classifier(model)
        return head.predict(source.clean(idx), batch_size=64, verbose=0)
    return model.predict(source.clean(idx), batch_size=32, verbose=0)


def train_classifier(
    kind: Kind,
    images_uint8: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    cfg: ClassifierConfig,
    out_dir: Path | None,
    seed: int = 0,
    val_images: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
) -> keras.Model:
    """Train on prepared uint8 images; early stopping on the validation images when given, else on training loss."""
    n_train, n_val = len(images_uint8), 0 if val_images is None else len(val_images)
    images = np.concatenate([images_uint8, val_images]) if n_val else images_uint8
    all_labels = np.concatenate([labels, val_labels]) if n_val else labels
    source = _make_source(kind, images, all_labels, len(class_names), cfg, seed)
    val = np.arange(n_train, n_train + n_val) if n_val else None
    return _fit(source, np.arange(n_train), val, cfg, out_dir, seed)[0]


def cross_validate(
    kind: Kind, images: np.ndarray, labels: np.ndarray, class_names: list[str], cfg: ClassifierConfig, seed: int = 0
) -> dict[str, Any]:
    """Stratified K-fold cross-validation; out-of-fold macro/per-class F1, confusion matrix, accuracy, time."""
    t0 = time.perf_counter()
    source = _make_source(kind, images, labels, len(class_names), cfg, seed)
    return _cross_validate(source, class_names, cfg, seed, t0)


def _cross_validate(
    source: _Source, class_names: list[str], cfg: ClassifierConfig, seed: int, t0: float
) -> dict[str, Any]:
    """K folds; each trains on its training part minus a stratified early-stopping slice, predicts its held-out part."""
    labels, n = source.labels, source.n_classes
    predicted = np.full(len(labels), -1, np.int64)
    best_epochs = []
    for fold, test in enumerate(stratified_folds(labels, cfg.folds, seed)):
        train_part = np.setdiff1d(np.arange(len(labels)), test)
        keep, held = stratified_holdout(labels[train_part], VAL_FRACTION, seed + fold)
        model, best = _fit(source, train_part[keep], train_part[held], cfg, None, seed + fold)
        predicted[test] = _predict(model, source, test).argmax(axis=1)
        best_epochs.append(best)
        fold_f1 = macro_f1(labels[test], predicted[test], n)
        log.info("%s fold %d/%d: macro F1 %.3f (best epoch %d)", source.kind, fold + 1, cfg.folds, fold_f1, best)
        keras.backend.clear_session(free_memory=True)
    f1 = per_class_f1(labels, predicted, n)
    result = {
        "kind": source.kind,
        "folds": cfg.folds,
        "macro_f1": float(macro_f1(labels, predicted, n)),
        "per_class_f1": {name: float(v) for name, v in zip(class_names, f1, strict=True)},
        "confusion_matrix": confusion_matrix(labels, predicted, n).tolist(),
        "class_names": list(class_names),
        "accuracy": float(np.mean(predicted == labels)),
        "train_seconds": round(time.perf_counter() - t0, 1),
        "best_epochs": best_epochs,
        "n_images": len(labels),
        "evaluation": "stratified K-fold out-of-fold predictions on the test split (the only labelled defects)",
    }
    log.info("%s CV: macro F1 %.3f, accuracy %.3f", source.kind, result["macro_f1"], result["accuracy"])
    return result


def train_and_save(kind: Kind, splits: DatasetSplits, cfg: ClassifierConfig, out_dir: Path) -> dict[str, Any]:
    """Cross-validate on the test split's images (the reported figures), train on all of them, write the folder.

    The final model trains for the median best epoch of the folds (no images are left for early stopping).
    """
    class_names = [NORMAL, *splits.defect_types]
    spec = preprocess_spec(kind, cfg.size)
    images, kept = load_images(splits.test, spec, splits.skipped)
    labels = np.array([class_names.index(s.defect_type) for s in kept], np.int64)
    t0 = time.perf_counter()
    source = _make_source(kind, images, labels, len(class_names), cfg, 0)
    metrics = _cross_validate(source, class_names, cfg, 0, t0)
    metrics["final_epochs"] = max(1, int(np.median(metrics["best_epochs"])))
    out_dir.mkdir(parents=True, exist_ok=True)
    final_cfg = cfg.model_copy(update={"epochs": metrics["final_epochs"]})
    model, _ = _fit(source, np.arange(len(labels)), None, final_cfg, out_dir, 0)
    model.save(out_dir / "model.keras")
    name = f"{splits.name}-classifier-{kind}"
    calibration = {"class_names": class_names}
    finalise_model_folder(
        out_dir, kind="classifier", name=name, preprocess=spec, calibration=calibration, metrics=metrics, splits=splits
    )
    log.info("classifier %s written to %s (%.0f s)", name, out_dir, time.perf_counter() - t0)
    return metrics

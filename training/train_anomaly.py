"""Train, calibrate and evaluate the anomaly models (autoencoder, PatchCore) of one data set."""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from edge_agent.preprocess import PreprocessSpec, normalise
from edge_agent.scoring import Calibration, fit_calibration, gaussian_smooth, reconstruction_map
from training.augment import augment_batch
from training.config import AugmentConfig, TrainConfig
from training.data import DatasetSplits, load_images, load_masks
from training.evaluate import evaluate_anomaly, save_heatmaps

log = logging.getLogger(__name__)

AE_BLUR_SIGMA = 2.0


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def keras_forward(model: keras.Model) -> Callable[[np.ndarray], list[np.ndarray]]:
    """Compiled inference of a Keras model: float32 batch in, list of numpy outputs out."""
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def run(x: np.ndarray) -> list[np.ndarray]:
        out = forward(tf.constant(x, tf.float32))
        return [np.asarray(o) for o in (out if isinstance(out, list | tuple) else [out])]

    return run


class AugmentedImages(keras.utils.PyDataset):
    """Batches of (augmented input, clean target) for the autoencoder, reshuffled every epoch."""

    def __init__(self, images: np.ndarray, spec: PreprocessSpec, augment: AugmentConfig, batch: int, seed: int) -> None:
        super().__init__()
        self.images, self.spec, self.augment, self.batch = images, spec, augment, batch
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(images))

    def __len__(self) -> int:
        return int(np.ceil(len(self.images) / self.batch))

    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        picked = self.images[self.order[idx * self.batch : (idx + 1) * self.batch]]
        x = normalise(augment_batch(picked, self.augment, self.rng), self.spec)
        return x, x

    def on_epoch_end(self) -> None:
        """Reshuffle."""
        self.order = self.rng.permutation(len(self.images))


class AutoencoderScorer:
    """Scores images by reconstruction error (MSE + SSIM map, smoothed); score = max of the map."""

    def __init__(
        self, reconstruct: Any, spec: PreprocessSpec, ssim_weight: float, blur_sigma: float = AE_BLUR_SIGMA
    ) -> None:
        self.reconstruct, self.spec = reconstruct, spec
        self.ssim_weight, self.blur_sigma = ssim_weight, blur_sigma

    def score(self, images: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Image scores (N,) and anomaly maps (N, size, size)."""
        maps = []
        for start in range(0, len(images), batch_size):
            x = normalise(images[start : start + batch_size], self.spec)
            recon = np.asarray(self.reconstruct(x))
            for orig, rec in zip(x, recon, strict=True):
                maps.append(gaussian_smooth(reconstruction_map(orig, rec, self.ssim_weight), self.blur_sigma))
        stacked = np.stack(maps)
        return stacked.reshape(len(stacked), -1).max(axis=1), stacked


def _calibrate_and_evaluate(
    scorer: Any,
    splits: DatasetSplits,
    spec: PreprocessSpec,
    cfg: TrainConfig,
    folder: Path,
    extra_normal_scores: np.ndarray | None = None,
) -> tuple[Calibration, dict[str, Any]]:
    """Fit the threshold on normal scores, then evaluate on the test split and draw heatmaps.

    The normal scores are the validation images' and ``extra_normal_scores`` (PatchCore's leave-one-out scores of
    its training images). The recall on synthetic defects made from the validation images is reported at the
    fitted threshold, next to the false-alarm rate the threshold is expected to give.
    """
    from training.synthetic import synthetic_recall

    val_images, _ = load_images(splits.validation, spec, splits.skipped)
    val_scores, val_maps = scorer.score(val_images)
    t = cfg.threshold
    calibration = fit_calibration(
        val_scores, val_maps, t.method, t.k, t.quantile, t.pixel_quantile, t.false_alarm_rate, extra_normal_scores
    )
    recall = synthetic_recall(lambda x: scorer.score(x)[0], val_images, calibration.threshold, cfg.dataset.seed)
    test_images, test_samples = load_images(splits.test, spec, splits.skipped)
    t0 = time.perf_counter()
    scores, maps = scorer.score(test_images)
    per_image_ms = (time.perf_counter() - t0) / max(len(test_images), 1) * 1000
    masks = load_masks(test_samples, spec) if splits.has_masks else None
    result = evaluate_anomaly(test_samples, scores, maps, masks, calibration)
    result["float_score_ms_per_image"] = per_image_ms
    result["expected_false_alarm_rate"] = calibration.false_alarm_bound
    result["false_alarm_rate_asked"] = calibration.false_alarm_rate
    result["normal_scores_for_threshold"] = calibration.n_normal
    result["synthetic_recall"] = recall
    result["threshold_note"] = calibration.note
    save_heatmaps(folder / "heatmaps", test_samples, test_images, maps, masks, calibration, cfg.heatmap_samples)
    np.savez_compressed(folder / "test_scores.npz", scores=scores, labels=[s.label for s in test_samples])
    return calibration, result


def train_autoencoder(splits: DatasetSplits, cfg: TrainConfig, folder: Path) -> dict[str, Any]:
    """Train the autoencoder on normal images and write its model folder; returns the metrics."""
    from training.artifacts import finalise_model_folder
    from training.device import float32_copy, precision_policy, training_device
    from training.models.autoencoder import build_autoencoder, mse_ssim_loss

    ae = cfg.autoencoder
    spec = PreprocessSpec(ae.size, ae.color, ae.resize, offset=0.0, scale=255.0)
    folder.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(cfg.dataset.seed)
    t0 = time.perf_counter()
    train_images, _ = load_images(splits.train, spec, splits.skipped)
    val_x = normalise(load_images(splits.validation, spec, splits.skipped)[0], spec)
    device = training_device()

    def build() -> keras.Model:
        return build_autoencoder(ae.size, spec.channels, ae.base_filters, ae.latent_channels)

    with precision_policy(device.mixed_precision):
        model = build()
        model.compile(optimizer=keras.optimizers.Adam(ae.learning_rate), loss=mse_ssim_loss(ae.ssim_weight))
        callbacks = [
            keras.callbacks.EarlyStopping(patience=ae.patience, restore_best_weights=True),
            keras.callbacks.ModelCheckpoint(folder / "best.keras", save_best_only=True),
            keras.callbacks.TensorBoard(log_dir=str(folder / "logs"), write_graph=False),
        ]
        data = AugmentedImages(train_images, spec, ae.augment, ae.batch_size, cfg.dataset.seed)
        history = model.fit(data, validation_data=(val_x, val_x), epochs=ae.epochs, callbacks=callbacks, verbose=2)
    if device.mixed_precision:
        model = float32_copy(model, build)  # what export converts: the same graph as a CPU run's
    train_seconds = time.perf_counter() - t0
    model.save(folder / "model.keras")
    (folder / "best.keras").unlink(missing_ok=True)

    forward = keras_forward(model)
    scorer = AutoencoderScorer(lambda x: forward(x)[0], spec, ae.ssim_weight)
    calibration, result = _calibrate_and_evaluate(scorer, splits, spec, cfg, folder)
    result.update(
        model="autoencoder",
        epochs_run=len(history.history["loss"]),
        train_seconds=train_seconds,
        peak_rss_mb=peak_rss_mb(),
        resolution=ae.size,
        params=model.count_params(),
    )
    finalise_model_folder(
        folder,
        kind="autoencoder",
        name=f"{splits.name}-autoencoder",
        preprocess=spec,
        calibration={**calibration.to_dict(), "ssim_weight": ae.ssim_weight, "blur_sigma": AE_BLUR_SIGMA},
        metrics=result,
        splits=splits,
    )
    return result


def train_patchcore(
    splits: DatasetSplits, cfg: TrainConfig, folder: Path, auto: bool = True, budget_seconds: float = 900.0
) -> dict[str, Any]:
    """Build the PatchCore memory bank on normal images and write its model folder; returns the metrics.

    With ``auto`` the settings the YAML leaves open are chosen first (:func:`training.autoconfig.search_patchcore`,
    within ``budget_seconds``); the search's figures go to ``autoconfig.json`` and its choice to the metrics and
    ``calibration.json`` (and so into the bundle's manifest).
    """
    from training.artifacts import finalise_model_folder, write_json
    from training.autoconfig import SEARCHED, search_patchcore
    from training.backbones import get_backbone
    from training.device import training_device
    from training.models.patchcore import PatchCoreScorer, bank_params

    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    search: dict[str, Any] | None = None
    pc = cfg.patchcore
    if auto and not set(SEARCHED) <= pc.model_fields_set:
        pc, search = search_patchcore(cfg, splits, budget_seconds)
        write_json(folder / "autoconfig.json", search)
        cfg = cfg.model_copy(update={"patchcore": pc})
    search_seconds = time.perf_counter() - t0
    backbone, (offset, scale) = get_backbone(pc.backbone, pc.size, pc.weights, tuple(pc.taps))
    spec = PreprocessSpec(pc.size, "rgb", pc.resize, offset=offset, scale=scale)

    batch = training_device().embed_batch
    scorer = PatchCoreScorer(
        keras_forward(backbone), spec, pc.blur_sigma, pc.pool, top_fraction=pc.score_top_fraction, batch_size=batch
    )
    train_images, _ = load_images(splits.train, spec, splits.skipped)
    bank_kwargs = bank_params(pc, cfg.dataset.seed)
    bank = scorer.fit(train_images, **bank_kwargs)
    loo_scores = scorer.leave_one_out(train_images)
    train_seconds = time.perf_counter() - t0
    backbone.save(folder / "backbone.keras")
    scorer.save_bank(folder)
    calibration, result = _calibrate_and_evaluate(scorer, splits, spec, cfg, folder, loo_scores)
    settings = {
        "backbone": pc.backbone,
        "size": pc.size,
        "bank_rotations": list(pc.bank_rotations),
        "coreset_ratio": pc.coreset_ratio,
        "blur_sigma": pc.blur_sigma,
        "score_top_fraction": pc.score_top_fraction,
        "whiten": pc.whiten,
        "pool": pc.pool,
        "chosen_by": "search" if search else "config",
    }
    result.update(
        settings=settings,
        search_seconds=search_seconds if search else 0.0,
        search_synthetic=search["chosen_figures"] if search else None,
        model="patchcore",
        backbone=pc.backbone,
        train_seconds=train_seconds,
        peak_rss_mb=peak_rss_mb(),
        resolution=pc.size,
        bank_size=int(bank.shape[0]),
        feature_dim=int(bank.shape[1]),
    )
    finalise_model_folder(
        folder,
        kind="patchcore",
        name=f"{splits.name}-patchcore",
        preprocess=spec,
        calibration={
            **calibration.to_dict(),
            "blur_sigma": pc.blur_sigma,
            "pool": scorer.pool,
            "taps": pc.taps,
            "score_top_fraction": pc.score_top_fraction,
            "bank": bank_kwargs,
            "settings": settings,
            "search": {k: search[k] for k in ("chosen_figures", "seconds", "objective")} if search else None,
        },
        metrics=result,
        splits=splits,
    )
    return result

"""Training's device choice, and mixed precision (run here on the CPU) giving the same float32 model to export."""

from __future__ import annotations

import logging

import keras
import numpy as np
import pytest

from training.device import CPU_EMBED_BATCH, float32_copy, precision_policy, training_device
from training.models.autoencoder import build_autoencoder, mse_ssim_loss


def test_this_machine_trains_on_the_cpu_and_says_so(caplog, monkeypatch):
    monkeypatch.delenv("LINEWATCH_MIXED_PRECISION", raising=False)
    training_device.cache_clear()
    with caplog.at_level(logging.INFO, logger="training.device"):
        device = training_device()
    training_device.cache_clear()
    assert (device.kind, device.mixed_precision, device.embed_batch) == ("cpu", False, CPU_EMBED_BATCH)
    assert "training on the CPU" in caplog.text


@pytest.mark.slow
def test_mixed_precision_trains_and_saves_a_float32_model(tmp_path):
    def build() -> keras.Model:
        return build_autoencoder(32, 3, base_filters=4, latent_channels=4)

    keras.utils.set_random_seed(0)
    images = np.random.default_rng(0).random((8, 32, 32, 3), dtype=np.float32)
    with precision_policy(True):
        mixed = build()
        assert mixed.layers[1].compute_dtype == "float16" and mixed.layers[-1].compute_dtype == "float32"
        mixed.compile(optimizer=keras.optimizers.Adam(1e-3), loss=mse_ssim_loss(0.5))
        history = mixed.fit(images, images, epochs=2, batch_size=4, verbose=0)
    assert keras.config.dtype_policy().name == "float32"  # restored after the block
    assert np.isfinite(history.history["loss"]).all()
    plain = float32_copy(mixed, build)
    assert all(layer.compute_dtype == "float32" for layer in plain.layers)
    assert all(w.dtype == np.float32 for w in plain.get_weights())
    np.testing.assert_allclose(plain.predict(images, verbose=0), mixed.predict(images, verbose=0), atol=2e-2)
    plain.save(tmp_path / "model.keras")
    again = keras.models.load_model(tmp_path / "model.keras", compile=False)
    assert all(layer.compute_dtype == "float32" for layer in again.layers)

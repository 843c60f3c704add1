"""Convolutional autoencoder (baseline anomaly model): bounded activations so that it survives int8.

Encoder: strided 4x4 convolutions with ReLU6 down to size/16; decoder: transposed convolutions back up;
sigmoid output in [0, 1] (input normalised as x / 255). Trained with (1 - w) MSE + w (1 - SSIM).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers


def build_autoencoder(size: int, channels: int, base_filters: int = 32, latent_channels: int = 64) -> keras.Model:
    """Autoencoder for size x size x channels inputs in [0, 1]; size must be a multiple of 16."""
    if size % 16:
        msg = f"autoencoder input size must be a multiple of 16, got {size}"
        raise ValueError(msg)
    inputs = keras.Input((size, size, channels), name="image")
    x = inputs
    filters = [base_filters, base_filters * 2, base_filters * 4, base_filters * 4]
    for i, f in enumerate(filters):
        x = layers.Conv2D(f, 4, strides=2, padding="same", name=f"enc{i}_down")(x)
        x = layers.ReLU(max_value=6.0, name=f"enc{i}_relu6")(x)
        x = layers.Conv2D(f, 3, padding="same", name=f"enc{i}_conv")(x)
        x = layers.ReLU(max_value=6.0, name=f"enc{i}_relu6b")(x)
    x = layers.Conv2D(latent_channels, 1, name="bottleneck")(x)
    x = layers.ReLU(max_value=6.0, name="bottleneck_relu6")(x)
    for i, f in enumerate(reversed(filters)):
        x = layers.Conv2DTranspose(f, 4, strides=2, padding="same", name=f"dec{i}_up")(x)
        x = layers.ReLU(max_value=6.0, name=f"dec{i}_relu6")(x)
        x = layers.Conv2D(f, 3, padding="same", name=f"dec{i}_conv")(x)
        x = layers.ReLU(max_value=6.0, name=f"dec{i}_relu6b")(x)
    # float32 even under mixed precision: the loss compares it with float32 images
    outputs = layers.Conv2D(channels, 3, padding="same", activation="sigmoid", name="reconstruction", dtype="float32")(
        x
    )
    return keras.Model(inputs, outputs, name="conv_autoencoder")


def mse_ssim_loss(ssim_weight: float) -> keras.losses.Loss:
    """Loss (1 - w) * MSE + w * (1 - SSIM) for images in [0, 1]."""

    @keras.saving.register_keras_serializable(package="linewatch")
    def loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        mse = tf.reduce_mean(tf.square(y_true - y_pred), axis=[1, 2, 3])
        ssim = tf.image.ssim(y_true, y_pred, max_val=1.0, filter_size=11, filter_sigma=1.5)
        return (1.0 - ssim_weight) * mse + ssim_weight * (1.0 - ssim)

    return loss

"""Defect-type classifiers: a small custom CNN baseline and EfficientNet-Lite0 transfer learning.

Both end in global average pooling, dropout and a softmax over ``n_classes`` (index 0 = normal). Activations are
bounded (ReLU6) so that the models survive int8 quantisation.

Transfer model: the EfficientNet-Lite0 base is frozen up to and including ``stage6`` (the output of the 4th
MBConv of stage 6, 7x7x192 at 224 px). Trainable are the convolutions of the last block ``block7a`` (MBConv
192 -> 320) and of the 1x1 head conv ``top_conv`` (320 -> 1280), plus the new dense layer. Every BatchNorm layer
stays frozen (inference mode, ImageNet statistics): with a few dozen images per class, re-estimating batch
statistics does more harm than good. Because everything before ``block7a`` is frozen, training can run on
cached ``stage6`` features (see :func:`split_transfer_classifier`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
from keras import layers

from training.backbones.efficientnet_lite import NORMALISATION, build_efficientnet_lite

#: (offset, scale) of the custom CNN input: x / 255.
CUSTOM_NORMALISATION: tuple[float, float] = (0.0, 255.0)
#: (offset, scale) of the transfer model input: (x - 127) / 128, as the EfficientNet-Lite checkpoints want.
TRANSFER_NORMALISATION: tuple[float, float] = NORMALISATION
#: Last frozen layer of the transfer model; every layer after it (block7a, top) is trainable except BatchNorm.
TRANSFER_SPLIT = "stage6"
#: BatchNorm momentum of the custom CNN: with ~4 steps per epoch the Keras default (0.99) leaves the moving
#: statistics far from the batch statistics for dozens of epochs, which makes validation loss useless early on.
BN_MOMENTUM = 0.9
#: Name of the dense layer whose weights are freshly initialised in every new classifier.
DENSE_NAME = "classifier_dense"


def build_custom_cnn(
    input_size: int,
    channels: int,
    n_classes: int,
    dropout: float = 0.3,
    filters: Sequence[int] = (16, 32, 64, 128),
    stem_stride: int = 4,
) -> keras.Model:
    """Small CNN: 4 blocks Conv-BN-ReLU6-MaxPool, GAP, Dropout, Dense softmax (~100k parameters).

    The first conv has stride ``stem_stride`` (kernel ``stem_stride + 1``), the others 3x3 stride 1; every block
    ends in a 2x2 max pool, so a 224 px input leaves a 4x4 map (stride 64). The stride-4 stem keeps training
    cheap on a CPU. Input: ``(input_size, input_size, channels)`` float32 x / 255 (:data:`CUSTOM_NORMALISATION`).
    """
    inputs = keras.Input((input_size, input_size, channels), name="image")
    x = inputs
    for i, f in enumerate(filters):
        kernel, stride = (stem_stride + 1, stem_stride) if i == 0 else (3, 1)
        x = layers.Conv2D(f, kernel, strides=stride, padding="same", use_bias=False, name=f"block{i}_conv")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"block{i}_bn")(x)
        x = layers.ReLU(max_value=6.0, name=f"block{i}_relu6")(x)
        x = layers.MaxPooling2D(2, padding="same", name=f"block{i}_pool")(x)
    outputs = _classifier_top(x, n_classes, dropout)
    return keras.Model(inputs, outputs, name="custom_cnn_classifier")


def build_transfer_classifier(
    n_classes: int,
    input_size: int = 224,
    backbone_weights: str | Path | None = "imagenet",
    dropout: float = 0.3,
) -> keras.Model:
    """EfficientNet-Lite0 (frozen up to ``stage6``), GAP, Dropout, Dense softmax, as one flat functional model.

    Input: ``(input_size, input_size, 3)`` float32 RGB normalised as (x - 127) / 128
    (:data:`TRANSFER_NORMALISATION`). Trainable: ``block7a_*`` and ``top_conv`` convolutions and the dense layer.
    """
    base = build_efficientnet_lite("lite0", input_size, backbone_weights, include_top=False)
    frozen = True
    for layer in base.layers:
        layer.trainable = not frozen and not isinstance(layer, layers.BatchNormalization)
        if layer.name == TRANSFER_SPLIT:
            frozen = False
    outputs = _classifier_top(base.output, n_classes, dropout)
    return keras.Model(base.input, outputs, name="efficientnet_lite0_classifier")


def _classifier_top(x: keras.KerasTensor, n_classes: int, dropout: float) -> keras.KerasTensor:
    x = layers.GlobalAveragePooling2D(name="classifier_pool")(x)
    x = layers.Dropout(dropout, name="classifier_dropout")(x)
    return layers.Dense(n_classes, activation="softmax", name=DENSE_NAME)(x)


def split_transfer_classifier(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """Split a transfer classifier into (frozen part: image -> stage6 features, head: features -> softmax).

    Both share their layers (and so their weights) with ``model``: training the head trains ``model``. The part
    after ``stage6`` is a plain chain (``block7a`` has no residual), so the head re-applies those layers in order.
    """
    names = [layer.name for layer in model.layers]
    split = names.index(TRANSFER_SPLIT)
    frozen = keras.Model(model.input, model.get_layer(TRANSFER_SPLIT).output, name="transfer_frozen")
    features = keras.Input(tuple(frozen.output.shape[1:]), name="features")
    x = features
    for layer in model.layers[split + 1 :]:
        x = layer(x)
    head = keras.Model(features, x, name="transfer_head")
    if tuple(head.output.shape) != tuple(model.output.shape):
        raise ValueError(f"head output {head.output.shape} differs from model output {model.output.shape}")
    return frozen, head


def copy_backbone_weights(source: keras.Model, target: keras.Model) -> None:
    """Copy every layer's weights except the dense classifier from ``source`` to ``target`` (same architecture)."""
    for layer in target.layers:
        if layer.weights and layer.name != DENSE_NAME:
            layer.set_weights(source.get_layer(layer.name).get_weights())


def trainable_layer_names(model: keras.Model) -> list[str]:
    """Names of the layers with trainable weights (for logging and tests)."""
    return [layer.name for layer in model.layers if layer.trainable and layer.trainable_weights]


def count_params(model: keras.Model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    return trainable, sum(int(np.prod(w.shape)) for w in model.weights)

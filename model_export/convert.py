"""Keras -> TFLite conversion: full-integer int8 with a representative data set, float16, float32."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from typing import Literal

import keras
import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)

Precision = Literal["int8", "float16", "float32"]


def convert(model: keras.Model, precision: Precision, calibration: np.ndarray | None = None) -> bytes:
    """Convert ``model`` to a TFLite flatbuffer.

    int8 is full-integer (weights and activations, int8 input and output tensors) calibrated on
    ``calibration``: normalised float32 images (N,H,W,C) through the shared pre-processing.
    """
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if precision == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        if calibration is None or len(calibration) == 0:
            msg = "int8 conversion needs calibration images"
            raise ValueError(msg)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: _representative(calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    log.info("converting %s to %s TFLite", model.name, precision)
    # Keras prints the whole traced signature while it saves the temporary SavedModel: keep it out of the logs
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        flatbuffer = converter.convert()
    log.debug("converter output: %s", printed.getvalue())
    return bytes(flatbuffer)


def _representative(images: np.ndarray) -> Iterator[list[np.ndarray]]:
    for image in images:
        yield [image[None].astype(np.float32)]

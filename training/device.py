"""Where training runs: a GPU when TensorFlow sees one, else the CPU; mixed precision where it pays.

Install the ``gpu`` extra instead of ``train`` on a machine with an NVIDIA GPU (``tensorflow[and-cuda]``, the same
TensorFlow version). Then training grows GPU memory as needed, embeds images for PatchCore in larger batches and
trains the autoencoder in mixed precision (float16 compute, float32 weights) on GPUs with compute capability 7.0
or newer; the model it saves is a float32 copy, so export and the int8 bundle are the same as from a CPU run.
``LINEWATCH_MIXED_PRECISION=0`` / ``1`` overrides the choice (1 also works on a CPU, slowly: the tests use it).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import keras

log = logging.getLogger(__name__)

#: Images per forward pass when PatchCore embeds them, on a CPU and on a GPU.
CPU_EMBED_BATCH, GPU_EMBED_BATCH = 16, 64


@dataclass(frozen=True)
class TrainingDevice:
    """What training runs on and how."""

    kind: str  # "gpu" or "cpu"
    name: str
    mixed_precision: bool
    embed_batch: int


def _mixed_override() -> bool | None:
    value = os.environ.get("LINEWATCH_MIXED_PRECISION", "").strip()
    return None if value == "" else value not in ("0", "false", "no")


@functools.cache
def training_device() -> TrainingDevice:
    """Detect the device once per process, configure it and log the choice."""
    import tensorflow as tf

    override = _mixed_override()
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        mixed = bool(override)
        log.info("training on the CPU (%d cores), mixed precision %s", os.cpu_count() or 1, "on" if mixed else "off")
        return TrainingDevice("cpu", "cpu", mixed, CPU_EMBED_BATCH)
    for gpu in gpus:
        with contextlib.suppress(RuntimeError):  # already initialised: the setting no longer applies
            tf.config.experimental.set_memory_growth(gpu, True)
    details = tf.config.experimental.get_device_details(gpus[0])
    name = str(details.get("device_name", gpus[0].name))
    capability = details.get("compute_capability")
    mixed = override if override is not None else capability is not None and tuple(capability) >= (7, 0)
    log.info(
        "training on GPU %s (compute capability %s; %d GPU(s) visible), mixed precision %s",
        name,
        capability,
        len(gpus),
        "on" if mixed else "off",
    )
    return TrainingDevice("gpu", name, mixed, GPU_EMBED_BATCH)


@contextlib.contextmanager
def precision_policy(mixed: bool) -> Iterator[None]:
    """Build and train models inside this block under ``mixed_float16`` when ``mixed``; float32 again after."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16" if mixed else "float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def float32_copy(model: keras.Model, build: Callable[[], keras.Model]) -> keras.Model:
    """The same model built under float32 with ``model``'s weights (mixed precision keeps float32 variables)."""
    with precision_policy(False):
        copy = build()
    copy.set_weights(model.get_weights())
    return copy

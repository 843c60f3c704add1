"""TFLite interpreter wrapper: ai_edge_litert, else tflite_runtime, else tf.lite (only as a last resort).

Handles the quantisation of inputs and the dequantisation of outputs, so callers work in float32.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import BundleError

log = logging.getLogger(__name__)


def limit_blas_threads(threads: int = 1) -> None:
    """Run numpy's BLAS (the nearest-neighbour matmul) on ``threads`` threads, process-wide.

    OpenBLAS worker threads spin between calls and take the cores the interpreter's threads need: on a 2-core box
    that made a frame ~1.5x slower. Measured by ``make bench-pipeline``; a no-op without threadpoolctl.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - an optional speed-up
        log.debug("threadpoolctl missing: BLAS threads left as they are")
        return
    threadpool_limits(limits=threads, user_api="blas")


_CANDIDATES = (
    ("ai_edge_litert.interpreter", "ai_edge_litert"),
    ("tflite_runtime.interpreter", "tflite_runtime"),
    ("tensorflow.lite", "tensorflow"),
)


def interpreter_class() -> tuple[Any, str]:
    """The first importable Interpreter class and the name of its package."""
    errors = []
    for module_name, label in _CANDIDATES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            errors.append(f"{module_name}: {err}")
            continue
        return module.Interpreter, label
    msg = "no TFLite interpreter available (pip install ai-edge-litert): " + "; ".join(errors)
    raise BundleError(msg)


@dataclass(frozen=True)
class TensorInfo:
    """Shape, dtype and (scale, zero point) of one model input or output."""

    name: str
    index: int
    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int

    @property
    def quantised(self) -> bool:
        """True for int8/uint8 tensors with a quantisation scale."""
        return self.dtype in ("int8", "uint8") and self.scale > 0

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for manifests."""
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "scale": self.scale,
            "zero_point": self.zero_point,
        }


def _info(detail: dict[str, Any]) -> TensorInfo:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorInfo(
        detail["name"],
        detail["index"],
        tuple(int(d) for d in detail["shape"]),
        np.dtype(detail["dtype"]).name,
        float(scale),
        int(zero_point),
    )


class TFLiteModel:
    """One .tflite graph with a single input; outputs come back as float32, finest spatial map first."""

    def __init__(self, model: str | Path | bytes, num_threads: int = 2) -> None:
        cls, self.backend = interpreter_class()
        kwargs: dict[str, Any] = {"num_threads": num_threads}
        if isinstance(model, bytes):
            kwargs["model_content"] = model
        else:
            kwargs["model_path"] = str(model)
        try:
            self.interpreter = cls(**kwargs)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise BundleError(
                f"cannot load TFLite model {model if not isinstance(model, bytes) else '<bytes>'}: {err}"
            ) from err
        inputs = self.interpreter.get_input_details()
        if len(inputs) != 1:
            raise BundleError(f"expected one model input, found {len(inputs)}")
        self.input = _info(inputs[0])
        outputs = [_info(d) for d in self.interpreter.get_output_details()]
        # Order feature maps from the finest grid to the coarsest; ties keep the graph's order.
        self.outputs = sorted(outputs, key=lambda t: -int(np.prod(t.shape[1:-1])) if len(t.shape) == 4 else 0)
        self._tables: dict[Hashable, np.ndarray] = {}

    @property
    def input_size(self) -> int:
        """Side of the square input image."""
        return int(self.input.shape[1])

    def quantise_input(self, x: np.ndarray) -> np.ndarray:
        """Float32 normalised batch -> the input tensor's dtype (round to nearest, saturate)."""
        if not self.input.quantised:
            return x.astype(self.input.dtype)
        info = np.iinfo(self.input.dtype)
        q = np.rint(x / np.float32(self.input.scale)) + self.input.zero_point
        quantised: np.ndarray = np.clip(q, info.min, info.max).astype(self.input.dtype)
        return quantised

    def input_table(self, key: Hashable, to_input: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """The input tensor's value for each of the 256 uint8 pixel values under the elementwise float mapping
        ``to_input`` (the shared normalisation), made once per ``key``: ``cv2.LUT(image, table)`` gives, value for
        value, what ``quantise_input(to_input(image))`` gives, without a float32 copy of the image (0.14 against
        1.58 ms for a 320 px RGB image, one thread)."""
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = self.quantise_input(to_input(np.arange(256, dtype=np.uint8)))
        return table

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        """Run one image (1,H,W,C) float32 normalised; return the outputs as float32 arrays."""
        return self.run(self.quantise_input(x))

    def run(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Run one input already in the input tensor's dtype and shape; return the outputs as float32 arrays."""
        self.interpreter.set_tensor(self.input.index, tensor)
        self.interpreter.invoke()
        results = []
        for out in self.outputs:
            raw = self.interpreter.get_tensor(out.index)
            if out.quantised:
                results.append((raw.astype(np.float32) - out.zero_point) * np.float32(out.scale))
            else:
                results.append(raw.astype(np.float32, copy=False))
        return results

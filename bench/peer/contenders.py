"""Contenders: one call per frame, from a decoded RGB uint8 image to (image score, float32 anomaly map).

anomalib exports run through thin runners written here (not anomalib's ``Inferencer`` classes, whose result
wrapping would add overhead): uint8 HWC -> float32 NCHW in 0..1 -> the exported graph, which resizes,
normalises, extracts features, scores and smooths. linewatch runs ``Inspector.inspect``, as a black box.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Result = tuple[float, np.ndarray]
Runner = Callable[[np.ndarray], Result]


@dataclass(frozen=True)
class Spec:
    """What to load: ``kind`` (linewatch, torch, onnx, openvino) and its file; ``label`` names the table row."""

    label: str
    kind: str
    path: str
    model: str  # "linewatch", "patchcore" or "padim"
    precision: str


def to_input(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 (1, 3, H, W) in 0..1, the input of every anomalib export."""
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32) * np.float32(1.0 / 255.0)


def _squeeze_map(amap: np.ndarray) -> np.ndarray:
    """(1, 1, H, W) or (1, H, W) -> (H, W) float32."""
    return np.asarray(amap, dtype=np.float32).reshape(amap.shape[-2:])


def _linewatch(spec: Spec, threads: int) -> Runner:
    from edge_agent.bundle import load_bundle
    from edge_agent.inspector import Inspector

    insp = Inspector(load_bundle(spec.path), threads=threads)

    def run(rgb: np.ndarray) -> Result:
        r = insp.inspect(rgb)
        return float(r.score), np.asarray(r.anomaly_map, dtype=np.float32)

    return run


def _torch(spec: Spec, threads: int) -> Runner:
    import torch

    torch.set_num_threads(threads)
    model = torch.load(spec.path, map_location="cpu", weights_only=False)["model"].eval()  # anomalib's own export

    def run(rgb: np.ndarray) -> Result:
        with torch.inference_mode():
            out = model(torch.from_numpy(to_input(rgb)))
        return float(out.pred_score.reshape(-1)[0]), _squeeze_map(out.anomaly_map.numpy())

    return run


def _torch_training_resize(spec: Spec, threads: int) -> Runner:
    """The torch export run with the pre-processor's training transform (antialiased resize) instead of its
    export transform (no antialiasing); quality only, to show what the difference costs."""
    import torch

    torch.set_num_threads(threads)
    module = torch.load(spec.path, map_location="cpu", weights_only=False)["model"].eval()

    def run(rgb: np.ndarray) -> Result:
        with torch.inference_mode():
            x = module.pre_processor.transform(torch.from_numpy(to_input(rgb)))
            out = module.post_processor(module.model(x))
        return float(out.pred_score.reshape(-1)[0]), _squeeze_map(out.anomaly_map.numpy())

    return run


def _onnx(spec: Spec, threads: int) -> Runner:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(spec.path, sess_options=opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    score_i, map_i = outputs.index("pred_score"), outputs.index("anomaly_map")

    def run(rgb: np.ndarray) -> Result:
        res = session.run(None, {name: to_input(rgb)})
        return float(np.asarray(res[score_i]).reshape(-1)[0]), _squeeze_map(res[map_i])

    return run


def openvino_config(threads: int) -> dict[str, Any]:
    """Compile options: only the thread count; precision and the performance hint stay OpenVINO's defaults."""
    return {"INFERENCE_NUM_THREADS": threads}


def _openvino(spec: Spec, threads: int) -> Runner:
    import openvino as ov

    compiled = ov.Core().compile_model(spec.path, "CPU", openvino_config(threads))
    request = compiled.create_infer_request()
    names = [o.get_any_name() for o in compiled.outputs]
    score_o, map_o = compiled.outputs[names.index("pred_score")], compiled.outputs[names.index("anomaly_map")]

    def run(rgb: np.ndarray) -> Result:
        res = request.infer({0: to_input(rgb)})
        return float(np.asarray(res[score_o]).reshape(-1)[0]), _squeeze_map(res[map_o])

    return run


_LOADERS: dict[str, Callable[[Spec, int], Runner]] = {
    "linewatch": _linewatch,
    "torch": _torch,
    "torch_training_resize": _torch_training_resize,
    "onnx": _onnx,
    "openvino": _openvino,
}


def load(spec: Spec, threads: int) -> Runner:
    """Construct the contender with ``threads`` compute threads (torch: process-wide ``set_num_threads``)."""
    return _LOADERS[spec.kind](spec, threads)


def openvino_properties(path: str, threads: int) -> dict[str, str]:
    """The compiled model's effective precision hint, performance hint, streams and threads (for the report)."""
    import openvino as ov

    compiled = ov.Core().compile_model(path, "CPU", openvino_config(threads))
    keys = ("INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS")
    values = {k: compiled.get_property(k) for k in keys}
    return {k: v.to_string() if hasattr(v, "to_string") else str(v) for k, v in values.items()}


def quality_only(exports: dict[str, dict[str, str]]) -> list[Spec]:
    """Rows measured for quality only: each torch export with the training-time (antialiased) resize."""
    names = {"patchcore": "PatchCore", "padim": "PaDiM"}
    return [
        Spec(
            f"anomalib {names[m]}, torch eager, antialiased resize as in training (quality only)",
            "torch_training_resize",
            p["torch"],
            m,
            "fp32",
        )
        for m, p in exports.items()
        if "torch" in p
    ]


def specs(bundle: Path, exports: dict[str, dict[str, str]]) -> list[Spec]:
    """linewatch first, then every export that exists, per peer model."""
    out = [Spec("linewatch PatchCore, TFLite int8", "linewatch", str(bundle), "linewatch", "int8")]
    names = {"patchcore": "PatchCore", "padim": "PaDiM"}
    rows = (
        ("torch", "torch", "torch eager", "fp32"),
        ("onnx", "onnx", "ONNX Runtime", "fp32"),
        ("openvino", "openvino", "OpenVINO", "fp32 IR"),
        ("openvino_int8", "openvino", "OpenVINO INT8_PTQ", "int8 (NNCF)"),
    )
    for model, paths in exports.items():
        for key, kind, what, precision in rows:
            if key in paths:
                out.append(Spec(f"anomalib {names[model]}, {what}", kind, paths[key], model, precision))
    return out

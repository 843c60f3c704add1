"""Per-image inspection on the edge: shared pre-processing, TFLite graph, float32 score maths, verdict."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edge_agent.bundle import Bundle, ModelEntry
from edge_agent.errors import BundleError
from edge_agent.preprocess import normalise, prepare
from edge_agent.runtime import TFLiteModel, limit_blas_threads
from edge_agent.scoring import NearestNeighbourIndex, distance_map, gaussian_smooth, patch_embedding, reconstruction_map


@dataclass(frozen=True)
class InspectionResult:
    """Verdict for one image; the anomaly map is float32 at the scorer's input resolution."""

    score: float
    normalised_score: float
    threshold: float
    anomalous: bool
    anomaly_map: np.ndarray
    defect_type: str | None
    type_confidence: float | None
    latency_ms: float


class MapScorer(Protocol):
    """Anything that turns a prepared uint8 image into (score, anomaly map)."""

    def score(self, prepared: np.ndarray) -> tuple[float, np.ndarray]:
        """Image score and anomaly map."""
        ...


def _check_io(model: TFLiteModel, entry: ModelEntry) -> None:
    """Refuse a graph whose input shape or quantisation differs from the manifest."""
    expected = entry.input
    actual = model.input.to_dict()
    if list(actual["shape"]) != list(expected["shape"]) or actual["dtype"] != expected["dtype"]:
        got, want = f"{actual['shape']} {actual['dtype']}", f"{expected['shape']} {expected['dtype']}"
        msg = f"{entry.file}: input {got} does not match the manifest's {want}"
        raise BundleError(msg)
    if abs(actual["scale"] - expected["scale"]) > 1e-9 or actual["zero_point"] != expected["zero_point"]:
        raise BundleError(f"{entry.file}: input quantisation differs from the manifest")


class PatchCoreTFLite:
    """PatchCore: backbone in TFLite, memory-bank distance and smoothing in float32 numpy."""

    def __init__(self, entry: ModelEntry, folder: Path, threads: int) -> None:
        self.entry = entry
        self.model = TFLiteModel(folder / entry.file, threads)
        _check_io(self.model, entry)
        self.index = NearestNeighbourIndex(np.load(folder / entry.params["memory_bank"]))
        self.pool = int(entry.params.get("pool", 3))
        self.sigma = float(entry.params.get("blur_sigma", 4.0))

    def score(self, prepared: np.ndarray) -> tuple[float, np.ndarray]:
        """Image score (max of the map) and the smoothed distance map."""
        maps = self.model(normalise(prepared[None], self.entry.preprocess))
        per_image = [m[0] for m in maps]
        patches = patch_embedding(per_image, self.pool)
        grid = per_image[0].shape[:2]
        amap = distance_map(self.index.distances(patches), grid, self.entry.preprocess.size, self.sigma)
        return float(amap.max()), amap


class AutoencoderTFLite:
    """Autoencoder: reconstruction in TFLite, MSE+SSIM map in float32 numpy."""

    def __init__(self, entry: ModelEntry, folder: Path, threads: int) -> None:
        self.entry = entry
        self.model = TFLiteModel(folder / entry.file, threads)
        _check_io(self.model, entry)
        self.ssim_weight = float(entry.params.get("ssim_weight", 0.5))
        self.sigma = float(entry.params.get("blur_sigma", 2.0))

    def score(self, prepared: np.ndarray) -> tuple[float, np.ndarray]:
        """Image score (max of the map) and the smoothed reconstruction-error map."""
        x = normalise(prepared[None], self.entry.preprocess)
        recon = self.model(x)[0]
        amap = gaussian_smooth(reconstruction_map(x[0], recon[0], self.ssim_weight), self.sigma)
        return float(amap.max()), amap


class DefectClassifier:
    """Defect-type classifier: softmax over ['good', *defect types]."""

    def __init__(self, entry: ModelEntry, folder: Path, threads: int) -> None:
        self.entry = entry
        self.model = TFLiteModel(folder / entry.file, threads)
        _check_io(self.model, entry)
        self.class_names = entry.class_names

    def probabilities(self, image_rgb: np.ndarray) -> np.ndarray:
        """Class probabilities (softmax output, renormalised after int8 rounding)."""
        x = normalise(prepare(image_rgb, self.entry.preprocess)[None], self.entry.preprocess)
        probs = np.clip(self.model(x)[0][0].astype(np.float64), 0.0, None)
        return probs / max(probs.sum(), 1e-12)

    def classify(self, image_rgb: np.ndarray) -> tuple[str, float]:
        """Most likely defect type (never 'good' when a defect type exists) and its probability."""
        probs = self.probabilities(image_rgb)
        order = np.argsort(probs)[::-1]
        best = next((i for i in order if self.class_names[i] != "good"), order[0])
        return self.class_names[best], float(probs[best])


SCORERS = {"patchcore": PatchCoreTFLite, "autoencoder": AutoencoderTFLite}


class Inspector:
    """Scores images with a bundle's scorer and, for anomalous ones, its classifier."""

    def __init__(self, bundle: Bundle, threads: int = 2) -> None:
        entry = bundle.models["scorer"]
        if entry.kind not in SCORERS:
            raise BundleError(f"bundle {bundle.path}: unknown scorer kind {entry.kind!r}")
        if entry.calibration is None:
            raise BundleError(f"bundle {bundle.path}: scorer has no calibration")
        limit_blas_threads(1)  # BLAS threads would spin on the cores the interpreter uses
        self.bundle = bundle
        self.entry = entry
        self.calibration = entry.calibration
        self.scorer: MapScorer = SCORERS[entry.kind](entry, bundle.path, threads)
        classifier = bundle.models.get("classifier")
        self.classifier = DefectClassifier(classifier, bundle.path, threads) if classifier else None

    def inspect(
        self, image_rgb: np.ndarray, classify_all: bool = False, threshold: float | None = None
    ) -> InspectionResult:
        """Verdict for one RGB uint8 image of any size (``threshold`` overrides the bundle's)."""
        t0 = time.perf_counter()
        threshold = self.calibration.threshold if threshold is None else threshold
        score, amap = self.scorer.score(prepare(image_rgb, self.entry.preprocess))
        anomalous = score >= threshold
        defect_type, confidence = None, None
        if self.classifier is not None and (anomalous or classify_all):
            defect_type, confidence = self.classifier.classify(image_rgb)
        return InspectionResult(
            score=score,
            normalised_score=float(self.calibration.normalise(score)),
            threshold=threshold,
            anomalous=bool(anomalous),
            anomaly_map=amap,
            defect_type=defect_type,
            type_confidence=confidence,
            latency_ms=(time.perf_counter() - t0) * 1000,
        )

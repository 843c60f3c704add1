"""Per-image inspection on the edge: shared pre-processing, TFLite graph, float32 score maths, verdict."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol, TypeVar

import cv2
import numpy as np

from edge_agent.bundle import Bundle, ModelEntry
from edge_agent.errors import BundleError
from edge_agent.manifest import AutoencoderParams, PatchCoreParams, TypeHeadParams
from edge_agent.nn_index import make_index
from edge_agent.preprocess import PreprocessSpec, normalise, prepare
from edge_agent.runtime import TFLiteModel, limit_blas_threads
from edge_agent.scoring import (
    distance_map,
    gaussian_smooth,
    image_score,
    patch_embedding,
    reconstruction_map,
)
from edge_agent.type_head import SHAPE_FEATURES, TypeHead, type_features


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
    type_probabilities: np.ndarray | None = None


#: What a scorer hands a defect-type model sharing its graph: the output itself, a call that computes it when a
#: type is asked for (a type tail runs only then), or None.
HeadOutput = np.ndarray | Callable[[], np.ndarray] | None


def resolve_head(head: HeadOutput) -> np.ndarray | None:
    """The head output, computed now when it was deferred."""
    return head() if callable(head) else head


class MapScorer(Protocol):
    """Anything that turns a prepared uint8 image into (score, anomaly map, extra head output or None)."""

    def score_and_head(self, prepared: np.ndarray) -> tuple[float, np.ndarray, HeadOutput]:
        """Image score, anomaly map and the graph's non-spatial output (a shared classifier's softmax)."""
        ...


def _check_io(model: TFLiteModel, entry: ModelEntry) -> None:
    """Refuse a graph whose input shape or quantisation differs from the manifest."""
    expected = entry.input
    actual = model.input.to_dict()
    if list(actual["shape"]) != list(expected.shape) or actual["dtype"] != expected.dtype:
        got, want = f"{actual['shape']} {actual['dtype']}", f"{expected.shape} {expected.dtype}"
        msg = f"{entry.file}: input {got} does not match the manifest's {want}"
        raise BundleError(msg)
    if abs(actual["scale"] - expected.scale) > 1e-9 or actual["zero_point"] != expected.zero_point:
        raise BundleError(f"{entry.file}: input quantisation differs from the manifest")


ParamsT = TypeVar("ParamsT", PatchCoreParams, AutoencoderParams, TypeHeadParams)


def _params(entry: ModelEntry, kind: type[ParamsT]) -> ParamsT:
    """The entry's parameters, which the manifest validated for its kind."""
    if not isinstance(entry.params, kind):
        raise BundleError(f"{entry.role}: {entry.kind} entry without {kind.__name__}")
    return entry.params


def graph_input(model: TFLiteModel, prepared: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The graph's input (1, H, W, C) for one prepared uint8 image: the shared :func:`normalise`, quantised to the
    input tensor, looked up per pixel value in the model's 256-entry table (the same numbers, no float32 copy)."""
    table = model.input_table((spec.offset, spec.scale), partial(normalise, spec=spec))
    looked_up: np.ndarray = cv2.LUT(np.ascontiguousarray(prepared), table).reshape(1, *prepared.shape)
    return looked_up


def backbone_maps(
    model: TFLiteModel, prepared: np.ndarray, spec: PreprocessSpec
) -> tuple[list[np.ndarray], np.ndarray | None]:
    """One prepared image through a PatchCore graph: its feature maps (finest first) and the 2-D head output of a
    classifier sharing the graph (None without one)."""
    outputs = model.run(graph_input(model, prepared, spec))
    return [o[0] for o in outputs if o.ndim == 4], next((o[0] for o in outputs if o.ndim == 2), None)


def deep_tap(tail: TFLiteModel, last_tap: np.ndarray) -> np.ndarray:
    """A type head's deeper map, from the scorer graph's last patch tap through the type tail graph."""
    deep: np.ndarray = tail(last_tap[None])[0][0]
    return deep


def backbone_patches(
    model: TFLiteModel,
    prepared: np.ndarray,
    spec: PreprocessSpec,
    pool: int,
    patch_taps: int,
    tail: TFLiteModel | None = None,
    last_tap_is_deep: bool = False,
) -> tuple[np.ndarray, tuple[int, int], np.ndarray | None, list[np.ndarray]]:
    """Patch embeddings (P, D) of one prepared image from the graph's first ``patch_taps`` feature maps, their grid,
    the 2-D head output of a classifier sharing the graph (None without one), and the feature maps after the patch
    taps (a type head's deeper tap; from ``tail`` when the graph stops at the taps, the last patch tap itself with
    ``last_tap_is_deep``)."""
    feature_maps, head = backbone_maps(model, prepared, spec)
    taps, deeper = feature_maps[:patch_taps], feature_maps[patch_taps:]
    if not deeper and tail is not None:
        deeper = [deep_tap(tail, taps[-1])]
    elif not deeper and last_tap_is_deep:
        deeper = [taps[-1]]
    return patch_embedding(taps, pool), taps[0].shape[:2], head, deeper


def _tail_features(
    tail: TFLiteModel, patches: np.ndarray, distances: np.ndarray, grid: tuple[int, int], last_tap: np.ndarray
) -> np.ndarray:
    return type_features(patches, distances, grid, deep_tap(tail, last_tap))


class PatchCoreTFLite:
    """PatchCore: backbone in TFLite, memory-bank distance and smoothing in float32 numpy.

    The graph's first ``params.patch_taps`` 4-D outputs form the patches. Its other output, when there is one,
    belongs to a defect-type model sharing the graph (``shares_graph_of``): a 2-D softmax of a classifier head,
    or a deeper feature map pooled where the distance map is high (:mod:`edge_agent.type_head`); either is
    returned as the head output. With ``params.type_tail`` the graph stops at the patch taps and the deeper map
    comes from the tail graph, run only when the head output is asked for (anomalous frames); with
    ``params.type_reads_last_tap`` the head pools the last patch tap itself.
    """

    def __init__(self, entry: ModelEntry, folder: Path, threads: int) -> None:
        self.entry = entry
        self.model = TFLiteModel(folder / entry.file, threads)
        _check_io(self.model, entry)
        params = _params(entry, PatchCoreParams)
        whitening = np.load(folder / params.whitening) if params.whitening else None
        bank = np.load(folder / params.memory_bank)
        if whitening is not None and whitening.shape != (bank.shape[1], bank.shape[1]):
            msg = f"{params.whitening}: shape {whitening.shape} does not fit the bank's {bank.shape[1]} dims"
            raise BundleError(msg)
        self.index = make_index(bank, threads, whitening, params.search_probe)  # exact unless the bank is large
        self.pool = params.pool
        self.sigma = params.blur_sigma
        self.top_fraction = params.score_top_fraction
        maps = [t.shape for t in self.model.outputs if len(t.shape) == 4]
        self.patch_taps = params.patch_taps
        if self.patch_taps > len(maps):
            raise BundleError(f"{entry.file}: {self.patch_taps} patch taps asked, the graph has {len(maps)} maps")
        self.head_width = next((t.shape[-1] for t in self.model.outputs if len(t.shape) == 2), None)
        if len(maps) > self.patch_taps:
            self.head_width = sum(s[-1] for s in maps) + SHAPE_FEATURES
        self.tail = TFLiteModel(folder / params.type_tail, threads) if params.type_tail else None
        if self.tail is not None:
            last = maps[self.patch_taps - 1]
            if len(maps) > self.patch_taps or self.tail.input.shape != last:
                msg = f"{params.type_tail}: input {list(self.tail.input.shape)} is not the last patch tap {list(last)}"
                raise BundleError(msg)
            deep = [t.shape for t in self.tail.outputs if len(t.shape) == 4]
            self.head_width = sum(s[-1] for s in (*maps, *deep[:1])) + SHAPE_FEATURES
        self.last_tap_is_deep = params.type_reads_last_tap
        if self.last_tap_is_deep:
            if self.tail is not None or len(maps) > self.patch_taps:
                raise BundleError(f"{entry.file}: type_reads_last_tap with a type tail or deeper outputs")
            self.head_width = sum(s[-1] for s in maps) + maps[-1][-1] + SHAPE_FEATURES

    def score(self, prepared: np.ndarray) -> tuple[float, np.ndarray]:
        """Image score (max of the map) and the smoothed distance map."""
        score, amap, _ = self.score_and_head(prepared)
        return score, amap

    def score_and_head(self, prepared: np.ndarray) -> tuple[float, np.ndarray, HeadOutput]:
        """Score, map and the output of a type model sharing the graph (None without one; deferred with a tail)."""
        feature_maps, head_output = backbone_maps(self.model, prepared, self.entry.preprocess)
        taps = feature_maps[: self.patch_taps]
        patches, grid = patch_embedding(taps, self.pool), taps[0].shape[:2]
        distances = self.index.distances(patches)
        amap = distance_map(distances, grid, self.entry.preprocess.size, self.sigma)
        head: HeadOutput = head_output
        if len(feature_maps) > self.patch_taps:
            head = type_features(patches, distances, grid, feature_maps[self.patch_taps])
        elif self.tail is not None:
            head = partial(_tail_features, self.tail, patches, distances, grid, taps[-1])
        elif self.last_tap_is_deep:
            head = partial(type_features, patches, distances, grid, taps[-1])
        return image_score(amap, self.top_fraction), amap, head


class AutoencoderTFLite:
    """Autoencoder: reconstruction in TFLite, MSE+SSIM map in float32 numpy."""

    def __init__(self, entry: ModelEntry, folder: Path, threads: int) -> None:
        self.entry = entry
        self.model = TFLiteModel(folder / entry.file, threads)
        _check_io(self.model, entry)
        params = _params(entry, AutoencoderParams)
        self.ssim_weight = params.ssim_weight
        self.sigma = params.blur_sigma

    def score(self, prepared: np.ndarray) -> tuple[float, np.ndarray]:
        """Image score (max of the map) and the smoothed reconstruction-error map."""
        x = normalise(prepared[None], self.entry.preprocess)
        recon = self.model(x)[0]
        amap = gaussian_smooth(reconstruction_map(x[0], recon[0], self.ssim_weight), self.sigma)
        return float(amap.max()), amap

    def score_and_head(self, prepared: np.ndarray) -> tuple[float, np.ndarray, None]:
        """Score and map; the autoencoder has no classifier head."""
        return (*self.score(prepared), None)


class DefectClassifier:
    """Defect-type model: softmax over its class names, from its own graph, the scorer graph's classifier head, or
    a type head (``kind: type_head``) over features the scorer's graph pooled where the map is high."""

    def __init__(self, entry: ModelEntry, folder: Path, threads: int) -> None:
        self.entry = entry
        self.class_names = entry.class_names
        self.model: TFLiteModel | None = None
        self.type_head: TypeHead | None = None
        if entry.kind == "type_head":
            head_file = _params(entry, TypeHeadParams).head
            self.type_head = TypeHead.load(folder / head_file)
            if self.type_head.class_names != self.class_names:
                raise BundleError(f"{head_file}: classes {self.type_head.class_names} != manifest's")
        elif entry.shares_graph_of is None:
            self.model = TFLiteModel(folder / entry.file, threads)
            _check_io(self.model, entry)

    @property
    def input_width(self) -> int:
        """Length of the head output this model reads from a shared graph."""
        return self.type_head.n_features if self.type_head is not None else len(self.class_names)

    def probabilities(
        self, image_rgb: np.ndarray, prepared: np.ndarray | None = None, head: HeadOutput = None
    ) -> np.ndarray:
        """Class probabilities (softmax, renormalised after int8 rounding).

        A model sharing the scorer's graph needs that graph's ``head`` output; one with its own graph reuses
        ``prepared`` (the image already resized with this classifier's pre-processing) when given.
        """
        if self.model is None:
            head = resolve_head(head)
            if head is None:
                raise BundleError(f"classifier shares the graph of {self.entry.shares_graph_of}: pass its output")
            raw = self.type_head.probabilities(head) if self.type_head is not None else head
        else:
            image = prepared if prepared is not None else prepare(image_rgb, self.entry.preprocess)
            raw = self.model.run(graph_input(self.model, image, self.entry.preprocess))[0][0]
        probs = np.clip(np.asarray(raw, np.float64), 0.0, None)
        normalised: np.ndarray = probs / max(probs.sum(), 1e-12)
        return normalised

    def pick(self, probs: np.ndarray) -> tuple[str, float]:
        """Most likely defect type (never 'good' when a defect type exists) and its probability."""
        order = np.argsort(probs)[::-1]
        best = next((i for i in order if self.class_names[i] != "good"), order[0])
        return self.class_names[best], float(probs[best])

    def classify(self, image_rgb: np.ndarray) -> tuple[str, float]:
        """Most likely defect type of an image, through the classifier's own graph."""
        return self.pick(self.probabilities(image_rgb))


SCORERS: dict[str, type[PatchCoreTFLite] | type[AutoencoderTFLite]] = {
    "patchcore": PatchCoreTFLite,
    "autoencoder": AutoencoderTFLite,
}


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
        if self.classifier is not None and self.classifier.entry.shares_graph_of is not None:
            width = getattr(self.scorer, "head_width", None)
            if self.classifier.entry.shares_graph_of != "scorer" or width != self.classifier.input_width:
                what = f"{self.classifier.input_width}-wide" if self.classifier.type_head else ""
                what = what or f"{len(self.classifier.class_names)}-class"
                msg = f"bundle {bundle.path}: the scorer graph has no {what} head output"
                raise BundleError(msg)
        # the classifier reuses the scorer's resized image when both want the same pre-processing
        self.same_preprocess = classifier is not None and classifier.preprocess == entry.preprocess

    @property
    def input_side(self) -> int:
        """The largest input side of the bundle's models: frames may be decoded down to it (JPEG)."""
        sizes = [self.entry.preprocess.size]
        if self.classifier is not None:
            sizes.append(self.classifier.entry.preprocess.size)
        return max(sizes)

    def inspect(
        self, image_rgb: np.ndarray, classify_all: bool = False, threshold: float | None = None
    ) -> InspectionResult:
        """Verdict for one RGB uint8 image of any size (``threshold`` overrides the bundle's)."""
        t0 = time.perf_counter()
        threshold = self.calibration.threshold if threshold is None else threshold
        prepared = prepare(image_rgb, self.entry.preprocess)
        score, amap, head = self.scorer.score_and_head(prepared)
        anomalous = score >= threshold
        defect_type, confidence, probs = None, None, None
        if self.classifier is not None and (anomalous or classify_all):
            probs = self.classifier.probabilities(image_rgb, prepared if self.same_preprocess else None, head)
            defect_type, confidence = self.classifier.pick(probs)
        return InspectionResult(
            score=score,
            normalised_score=float(self.calibration.normalise(score)),
            threshold=threshold,
            anomalous=bool(anomalous),
            anomaly_map=amap,
            defect_type=defect_type,
            type_confidence=confidence,
            latency_ms=(time.perf_counter() - t0) * 1000,
            type_probabilities=probs,
        )

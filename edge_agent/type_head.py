"""Defect type from what the scorer already computed: features pooled where the anomaly map is high.

The scorer's graph gives, besides PatchCore's patch taps, one deeper feature map (stride 32). For an anomalous
frame the type head pools three things, all in float32 outside the int8 graph:

- the patch embeddings of the most anomalous patches (top :data:`TOP_PATCH_FRACTION` of the grid), weighted by
  their nearest-neighbour distance: *what* the defect looks like at PatchCore's scale;
- the deep feature map weighted by the distance map above its median: the same at a coarser, more semantic scale;
- the map's shape: log peak distance, log share of patches above half the peak (how large the defect is), log
  mean distance of the top patches.

A multinomial logistic regression on standardised features (fitted by ``training.type_head``) turns them into
probabilities over ``class_names``. Needs only numpy and OpenCV.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

#: Share of the patch grid pooled as "the defect" (at least one patch).
TOP_PATCH_FRACTION = 0.02
#: Figures describing the map's shape, appended after the pooled features.
SHAPE_FEATURES = 3


def type_features(patches: np.ndarray, distances: np.ndarray, grid: tuple[int, int], deep: np.ndarray) -> np.ndarray:
    """Features (D + C + 3,) float32 of one image from its patches (P, D), distances (P,) and deep map (h, w, C)."""
    distances = np.asarray(distances, np.float32)
    k = max(1, round(TOP_PATCH_FRACTION * len(distances)))
    top = np.argpartition(distances, -k)[-k:]
    weights = distances[top] / max(float(distances[top].sum()), 1e-12)
    pooled_patches = weights @ patches[top]
    dist_map = distances.reshape(grid)
    small = cv2.resize(dist_map, (deep.shape[1], deep.shape[0]), interpolation=cv2.INTER_AREA)
    above = np.maximum(small - np.median(small), 0.0)
    above = above / max(float(above.sum()), 1e-12)
    pooled_deep = np.tensordot(above, np.asarray(deep, np.float32), axes=([0, 1], [0, 1]))
    peak = max(float(distances.max()), 1e-6)
    shape = np.log([peak, float((distances > 0.5 * peak).mean()) + 1e-4, float(distances[top].mean()) + 1e-6])
    return np.concatenate([pooled_patches, pooled_deep, shape]).astype(np.float32)


@dataclass(frozen=True)
class TypeHead:
    """Standardisation and multinomial logistic regression over :func:`type_features`."""

    class_names: list[str]
    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray
    bias: np.ndarray

    @property
    def n_features(self) -> int:
        """Length of the feature vector the head expects."""
        return len(self.mean)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Softmax over ``class_names`` for one feature vector (or a batch, (N, F) -> (N, K))."""
        z = ((np.asarray(features, np.float32) - self.mean) / self.std) @ self.weights + self.bias
        z = z - z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        probs: np.ndarray = e / e.sum(axis=-1, keepdims=True)
        return probs

    def save(self, path: Path) -> None:
        """Write the head as an ``.npz`` file (no pickles)."""
        with path.open("wb") as f:
            np.savez(
                f,
                class_names=np.array(self.class_names),
                mean=self.mean,
                std=self.std,
                weights=self.weights,
                bias=self.bias,
            )

    @classmethod
    def load(cls, path: Path) -> TypeHead:
        """Read a head written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            return cls(
                class_names=[str(c) for c in data["class_names"]],
                mean=data["mean"].astype(np.float32),
                std=data["std"].astype(np.float32),
                weights=data["weights"].astype(np.float32),
                bias=data["bias"].astype(np.float32),
            )

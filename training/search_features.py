"""What the settings search judges on (held-out normals and synthetic defects) and needs at one input size: the
backbone, held-out embeddings, coresets per orientation."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from edge_agent.preprocess import PreprocessSpec
from edge_agent.scoring import distance_map
from training import metrics
from training.config import PatchCoreConfig
from training.data import DatasetSplits, Sample, load_images
from training.synthetic import make_defects

#: Held-out normal images the search judges on (from the validation split), and synthetic defects made from each.
HELD_OUT_IMAGES = 40
DEFECTS_PER_IMAGE = 3


def shrink(images: np.ndarray, size: int) -> np.ndarray:
    """Images (N, S, S, C) resized to size x size (area interpolation)."""
    if images.shape[1] == size:
        return images
    return np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images])


def shrink_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """Boolean masks (N, S, S) resized to size x size (nearest neighbour)."""
    if masks.shape[1] == size:
        return masks
    return np.stack([cv2.resize(m.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) for m in masks]) > 0


def held_out_set(splits: DatasetSplits, pc: PatchCoreConfig, size: int, seed: int) -> tuple[np.ndarray, ...]:
    """Held-out normal images, synthetic defects made from them and the defects' masks, at ``size``."""
    rng = np.random.default_rng(seed)
    samples = list(splits.validation)
    if len(samples) > HELD_OUT_IMAGES:
        samples = [samples[i] for i in sorted(rng.choice(len(samples), HELD_OUT_IMAGES, replace=False))]
    normals, _ = load_images(samples, PreprocessSpec(size, "rgb", pc.resize))
    defects, masks, _ = make_defects(list(normals), DEFECTS_PER_IMAGE, seed)
    return normals, np.stack(defects), np.stack(masks)


def evaluate_grids(
    distances: np.ndarray, grid: tuple[int, int], masks: np.ndarray, n_normal: int, size: int, sigma: float
) -> tuple[np.ndarray, float]:
    """Anomaly maps of held-out images from their patch distances, and the pixel AUROC of the defects' maps."""
    maps = np.stack([distance_map(d, grid, size, sigma) for d in distances])
    pixel = metrics.pixel_auroc(masks, maps[n_normal:], max_pixels=400_000)
    return maps, pixel


def bank_rows(ratio: float, n_patches: int, max_bank: int) -> int:
    """Rows one orientation keeps: as in :func:`training.models.patchcore.build_memory_bank`."""
    return min(max(1, round(ratio * n_patches)), max_bank)


class SizeFeatures:
    """Everything the search needs at one input size, computed once: backbone, held-out embeddings, the whitening
    fitted on the upright training patches (when asked for), coresets."""

    def __init__(
        self,
        pc: PatchCoreConfig,
        backbone_name: str,
        size: int,
        train: list[Sample],
        held_out: np.ndarray,
        seed: int,
        pool: int = 3,
    ) -> None:
        from training.backbones import get_backbone
        from training.models.patchcore import PatchCoreScorer
        from training.train_anomaly import keras_forward

        backbone, (offset, scale) = get_backbone(backbone_name, size, pc.weights, tuple(pc.taps))
        spec = PreprocessSpec(size, "rgb", pc.resize, offset=offset, scale=scale)
        self.scorer = PatchCoreScorer(keras_forward(backbone), spec, pool=pool)
        self.pool = pool
        self.pc, self.seed = pc, seed
        self.train_images, _ = load_images(train, spec)
        self.held = self.scorer.embed(shrink(held_out, size))
        assert self.scorer.grid is not None
        self.grid: tuple[int, int] = self.scorer.grid
        self.n_patches = 0
        self.whitening: np.ndarray | None = None
        self.prefixes: dict[tuple[int, bool], np.ndarray] = {}

    def _patches(self, degrees: int) -> np.ndarray:
        """Patch rows (N * P, D) of the training images turned by ``degrees``."""
        turned = np.ascontiguousarray(np.rot90(self.train_images, degrees // 90, axes=(1, 2)))
        patches = self.scorer.embed(turned)
        self.n_patches = patches.shape[0] * patches.shape[1]
        return patches.reshape(self.n_patches, -1)

    def coreset(self, degrees: int, max_ratio: float, whiten: bool) -> np.ndarray:
        """Greedy coreset rows of the training images turned by ``degrees``, at ``max_ratio`` (smaller: a prefix),
        in the whitened space (fitted on the upright patches) or the backbone's own."""
        from training.models.patchcore import fit_whitening, greedy_coreset

        if (degrees, whiten) not in self.prefixes:
            patches = self._patches(degrees)
            if whiten:
                if self.whitening is None:
                    self.whitening = fit_whitening(patches if degrees == 0 else self._patches(0))
                patches = patches @ self.whitening
            n_max = bank_rows(max_ratio, self.n_patches, self.pc.max_bank)
            chosen = greedy_coreset(patches, n_max, self.pc.projection_dim or 128, self.seed)
            self.prefixes[degrees, whiten] = patches[chosen]
        return self.prefixes[degrees, whiten]

    def bank(self, turns: Sequence[int], ratio: float, max_ratio: float, whiten: bool) -> np.ndarray:
        """The memory bank of orientations ``0, *turns`` at ``ratio``."""
        rows = [self.coreset(d, max_ratio, whiten) for d in (0, *turns)]
        return np.concatenate([r[: bank_rows(ratio, self.n_patches, self.pc.max_bank)] for r in rows])

"""PatchCore-style feature scorer: a coreset memory bank of normal patch features on a pretrained backbone.

The backbone (a Keras model, later an int8 TFLite graph) produces feature maps; everything after it
(neighbourhood pooling, nearest-neighbour distance, map smoothing) is float32 numpy in
``edge_agent.scoring``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from edge_agent.preprocess import PreprocessSpec, normalise
from edge_agent.scoring import NearestNeighbourIndex, distance_map, image_score, patch_embedding
from training.config import PatchCoreConfig

log = logging.getLogger(__name__)

FeatureFn = Callable[[np.ndarray], list[np.ndarray]]
EmbedFn = Callable[[np.ndarray], np.ndarray]

#: Whitening: each eigenvalue of the patches' covariance is raised by this share of their mean (shrinkage, so that
#: near-empty directions are not blown up), then the patches are scaled by eigenvalue ** WHITEN_POWER.
WHITEN_SHRINK = 0.1
WHITEN_POWER = -0.5
#: File names of a run's (and a bundle's) memory bank and its whitening matrix.
MEMORY_BANK_FILE = "memory_bank.npy"
WHITENING_FILE = "whitening.npy"


def fit_whitening(patches: np.ndarray, shrink: float = WHITEN_SHRINK, power: float = WHITEN_POWER) -> np.ndarray:
    """Symmetric whitening matrix (D, D) float32 of patch rows (N, D): ``patches @ W`` has a covariance close to the
    identity in the directions that carry variance (eigenvalues shrunk by ``shrink`` x their mean).

    L2 distances after it weigh each direction by how much normal parts vary along it (a Mahalanobis distance),
    so a small change along a direction that normal patches barely use counts for more. The mean is not
    subtracted: distances do not depend on it.
    """
    n, dim = patches.shape
    total, gram = np.zeros(dim), np.zeros((dim, dim))
    for start in range(0, n, 65_536):  # float64 sums, a chunk at a time
        rows = np.asarray(patches[start : start + 65_536], np.float64)
        total += rows.sum(axis=0)
        gram += rows.T @ rows
    mean = total / max(1, n)
    covariance = (gram - n * np.outer(mean, mean)) / max(1, n - 1)
    eigenvalues, vectors = np.linalg.eigh(covariance)
    eigenvalues = np.maximum(eigenvalues, 0.0) + shrink * max(float(eigenvalues.mean()), 1e-12)
    return ((vectors * eigenvalues**power) @ vectors.T).astype(np.float32)


def greedy_coreset(features: np.ndarray, n_select: int, projection_dim: int | None = 128, seed: int = 0) -> np.ndarray:
    """Indices of a greedy k-center coreset (PatchCore), computed on a random projection of the rows."""
    n = len(features)
    if n_select >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    reduced = features
    if projection_dim is not None and features.shape[1] > projection_dim:
        proj = rng.standard_normal((features.shape[1], projection_dim)).astype(np.float32)
        reduced = features @ (proj / np.sqrt(projection_dim))
    reduced = np.ascontiguousarray(reduced, np.float32)
    sq = np.einsum("ij,ij->i", reduced, reduced)
    selected = np.empty(n_select, np.int64)
    selected[0] = rng.integers(n)
    min_d2 = np.full(n, np.inf, np.float32)
    for i in range(1, n_select + 1):
        centre = reduced[selected[i - 1]]
        d2 = sq - 2.0 * (reduced @ centre) + sq[selected[i - 1]]
        np.minimum(min_d2, d2, out=min_d2)
        if i < n_select:
            selected[i] = int(np.argmax(min_d2))
    return selected


def bank_params(pc: PatchCoreConfig, seed: int) -> dict[str, Any]:
    """Keyword arguments of :func:`build_memory_bank` from a config; training stores them beside the bank."""
    return {
        "coreset_ratio": pc.coreset_ratio,
        "max_bank": pc.max_bank,
        "projection_dim": pc.projection_dim,
        "rotations": list(pc.bank_rotations),
        "seed": seed,
        "whiten": pc.whiten,
    }


class StandIns(NamedTuple):
    """Per bank row: the nearest patch of another training image (M, D) in the search space, and that image (M,).
    Leave-one-out scoring puts each left-out row's stand-in in its place (see :func:`leave_one_out_scores`)."""

    rows: np.ndarray
    sources: np.ndarray


class MemoryBank(NamedTuple):
    """A memory bank: rows (M, D) float32 in the search space, the image each row came from (M,), the whitening
    matrix (D, D) that takes patches into that space (None: the patches' own space), and the rows' stand-ins."""

    rows: np.ndarray
    sources: np.ndarray
    whitening: np.ndarray | None
    stand_ins: StandIns


def nearest_of_other_image(
    patches: np.ndarray, image_of: np.ndarray, rows: np.ndarray, row_image: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``rows``: the index of its nearest patch whose image (``image_of``) is not the row's own
    (``row_image``; -1: any image), and that squared L2 distance (inf when there is none). Chunked products."""
    rows_sq = np.einsum("ij,ij->i", rows, rows)
    best = np.full(len(rows), np.inf, np.float32)
    best_at = np.zeros(len(rows), np.int64)
    chunk = max(1024, 2**26 // max(1, len(rows)))  # about 256 MB of distances at a time
    for start in range(0, len(patches), chunk):
        block = patches[start : start + chunk]
        d2 = np.einsum("ij,ij->i", block, block)[:, None] - 2.0 * (block @ rows.T) + rows_sq[None, :]
        d2[image_of[start : start + chunk, None] == row_image[None, :]] = np.inf
        nearest = d2.argmin(axis=0)
        value = d2[nearest, np.arange(len(rows))]
        better = value < best
        best[better] = value[better]
        best_at[better] = start + nearest[better]
    return best_at, best


def find_stand_ins(patches: np.ndarray, image_of: np.ndarray, rows: np.ndarray, row_image: np.ndarray) -> StandIns:
    """Stand-ins of bank ``rows`` traced to images ``row_image`` (-1: none): each row's nearest patch of another
    image among ``patches`` (``image_of``: the image of each patch). A row with no other image stands in for itself
    (and is dropped with its image). About a coreset's own cost."""
    at, d2 = nearest_of_other_image(patches, image_of, rows, row_image)
    found = np.isfinite(d2)
    return StandIns(np.where(found[:, None], patches[at], rows), np.where(found, image_of[at], row_image))


def build_memory_bank(
    embed: EmbedFn,
    images: np.ndarray,
    coreset_ratio: float,
    max_bank: int,
    projection_dim: int | None,
    rotations: Sequence[int] = (),
    seed: int = 0,
    whiten: bool = False,
) -> MemoryBank:
    """Memory bank of normal ``images``: a greedy coreset of their patch embeddings.

    ``embed`` maps prepared uint8 images (N, S, S, C) to patch embeddings (N, P, D). ``rotations`` (multiples of
    90 degrees) add the images turned by that much, for parts seen at any angle; each orientation gets its own
    coreset of ``coreset_ratio`` of its patches (at most ``max_bank``). With ``whiten``, a whitening matrix is
    fitted on the upright images' patches and the coreset is chosen, and the rows kept, in the whitened space.
    Training (Keras features) and export (the exported graph's features) both build their banks here.
    """
    banks, sources, stand_ins = [], [], []
    whitening = None
    for degrees in (0, *rotations):
        turned = np.ascontiguousarray(np.rot90(images, degrees // 90, axes=(1, 2)))
        embedded = embed(turned)
        patches = embedded.reshape(-1, embedded.shape[-1])
        if whiten:
            whitening = fit_whitening(patches) if whitening is None else whitening
            patches = patches @ whitening
        n_select = min(max(1, round(coreset_ratio * len(patches))), max_bank)
        log.info("coreset at %d deg: %d of %d patches (dim %d)", degrees, n_select, len(patches), patches.shape[1])
        chosen = greedy_coreset(patches, n_select, projection_dim or 128, seed)
        banks.append(patches[chosen])
        image_of = np.arange(len(patches)) // embedded.shape[1]
        sources.append(image_of[chosen])
        stand_ins.append(find_stand_ins(patches, image_of, patches[chosen], image_of[chosen]))
    joined = StandIns(*(np.concatenate(parts) for parts in zip(*stand_ins, strict=True)))
    return MemoryBank(np.concatenate(banks), np.concatenate(sources), whitening, joined)


def leave_one_out_scores(
    patches: np.ndarray,
    bank: MemoryBank,
    grid: tuple[int, int],
    size: int,
    blur_sigma: float,
    top_fraction: float | None,
) -> np.ndarray:
    """Image scores of the bank's own training images, each as a new part would score (N,).

    ``patches`` (N, P, D) are the training images' embeddings in bank order, in the patches' own space. A part's
    own rows are its nearest ones, so it is scored without them, and that overstates its score: where several
    parts look alike the coreset kept one of them's row and dropped the others' as covered, so the part that
    gave the row finds nothing left there. Putting each left-out row's stand-in (nearest patch of another image)
    in its place understates it: a stand-in is the best match there is. The score is the midpoint of the two
    (:func:`leave_one_out_bounds`). ``make bench-loo`` compares the three with held-out validation normals.
    """
    without, with_stand_ins = leave_one_out_bounds(patches, bank, grid, size, blur_sigma, top_fraction)
    return 0.5 * (without + with_stand_ins)


def leave_one_out_bounds(
    patches: np.ndarray,
    bank: MemoryBank,
    grid: tuple[int, int],
    size: int,
    blur_sigma: float,
    top_fraction: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each training image's score against the bank without its own rows, and with their stand-ins: (N,), (N,)."""
    without = np.empty(len(patches), np.float32)
    with_stand_ins = np.empty(len(patches), np.float32)
    for i, image_patches in enumerate(patches):
        left_out = bank.sources == i
        queries = image_patches if bank.whitening is None else image_patches @ bank.whitening
        rest = NearestNeighbourIndex(bank.rows[~left_out]).distances(queries)
        stand_ins = bank.stand_ins.rows[left_out & (bank.stand_ins.sources != i)]
        nearer = np.minimum(rest, NearestNeighbourIndex(stand_ins).distances(queries)) if len(stand_ins) else rest
        without[i] = image_score(distance_map(rest, grid, size, blur_sigma), top_fraction)
        with_stand_ins[i] = image_score(distance_map(nearer, grid, size, blur_sigma), top_fraction)
    return without, with_stand_ins


class PatchCoreScorer:
    """Fit a memory bank on normal images and score new ones (score = max of the smoothed map)."""

    def __init__(
        self,
        features: FeatureFn,
        spec: PreprocessSpec,
        blur_sigma: float = 4.0,
        pool: int = 3,
        top_fraction: float | None = None,
        batch_size: int = 16,
    ) -> None:
        self.features = features
        self.batch_size = batch_size
        self.spec = spec
        self.blur_sigma = blur_sigma
        self.pool = pool
        self.top_fraction = top_fraction
        self.index: NearestNeighbourIndex | None = None
        self.grid: tuple[int, int] | None = None
        self.memory: MemoryBank | None = None

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Patch embeddings (N, P, D) of prepared uint8 images, ``batch_size`` images per forward pass."""
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = normalise(images[start : start + self.batch_size], self.spec)
            maps = self.features(batch)
            for j in range(len(batch)):
                per_image = [m[j] for m in maps]
                self.grid = per_image[0].shape[:2]
                out.append(patch_embedding(per_image, self.pool))
        return np.stack(out)

    def fit(
        self,
        images: np.ndarray,
        coreset_ratio: float,
        max_bank: int,
        projection_dim: int | None,
        seed: int = 0,
        rotations: Sequence[int] = (),
        whiten: bool = False,
    ) -> np.ndarray:
        """Build the memory bank from normal training images; returns the bank (M, D) float32."""
        bank = build_memory_bank(self.embed, images, coreset_ratio, max_bank, projection_dim, rotations, seed, whiten)
        self.memory = bank
        self.set_bank(bank.rows, bank.whitening)
        return bank.rows

    def leave_one_out(self, images: np.ndarray) -> np.ndarray:
        """Leave-one-image-out scores of the training images the bank was fitted on (see module function)."""
        assert self.memory is not None and self.grid is not None
        patches = self.embed(images)
        return leave_one_out_scores(patches, self.memory, self.grid, self.spec.size, self.blur_sigma, self.top_fraction)

    def set_bank(self, bank: np.ndarray, whitening: np.ndarray | None = None) -> None:
        """Use ``bank`` as the memory bank (rows whitened by ``whitening`` when given)."""
        self.index = NearestNeighbourIndex(bank, whitening=whitening)

    def score(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image scores (N,) and anomaly maps (N, size, size) in float32 (score: see ``image_score``)."""
        if self.index is None:
            msg = "PatchCoreScorer.score called before fit or set_bank"
            raise RuntimeError(msg)
        patches = self.embed(images)
        assert self.grid is not None
        maps = np.stack(
            [distance_map(self.index.distances(p), self.grid, self.spec.size, self.blur_sigma) for p in patches]
        )
        return np.array([image_score(m, self.top_fraction) for m in maps], np.float32), maps

    def save_bank(self, folder: Path) -> Path:
        """Write the memory bank as float32 ``memory_bank.npy`` (and its ``whitening.npy`` when it has one)."""
        assert self.index is not None
        path = folder / MEMORY_BANK_FILE
        np.save(path, self.index.bank)
        if self.index.whitening is not None:
            np.save(folder / WHITENING_FILE, self.index.whitening)
        return path


def load_bank(folder: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """A training run's memory bank and its whitening matrix (None without one)."""
    whitening = folder / WHITENING_FILE
    return np.load(folder / MEMORY_BANK_FILE), np.load(whitening) if whitening.is_file() else None

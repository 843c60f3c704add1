"""Nearest-neighbour search that stays exact where the memory bank is small and scales where it is not.

:func:`make_index` returns the exact search (:class:`edge_agent.scoring.NearestNeighbourIndex`) for banks of up to
:data:`EXACT_MAX_ROWS` rows. Larger banks (turned banks, long feedback histories, high resolutions) get a
:class:`ClusteredIndex`, an inverted file: the bank is split into k-means cells (seeded, so every process builds the
same cells), and each query is compared exactly with the rows of the ``probe`` cells whose centroids lie nearest to
it. A query whose true nearest row sits in a cell it did not probe gets a distance a little too large.

The search runs in two passes, so that accuracy goes where the verdict is decided. Every query is first compared
with the rows of its ``probe`` nearest cells (1 by default; a bundle records the value it was calibrated with); then
the patches with the largest distances of the
frame (a :data:`REFINE_SHARE` of them, at least :data:`REFINE_MIN`), which set the image score and the hot spots of
the map, are searched again in their :data:`REFINE_PROBE` nearest cells. Distances never fall below the exact ones
(each is a minimum over a subset of the bank), so a patch left out of the second pass was already below the ones
that decide the score. ``make bench-nn`` measures the recall and the image AUROC against the exact search.
Float32 throughout; the result does not depend on the number of threads.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import numpy as np

from edge_agent.scoring import NearestNeighbourIndex, ThreadedSearch

#: Banks up to this many rows are searched exactly. Measured on bottle's 320 px patches (1,600 a frame, 152 dims),
#: subsets of its bank: the two-pass search (first pass over 2 cells, the default then) is as fast as the exact one
#: at 1,024 rows on 2 threads (3.1 vs 3.3 ms) and 2.4x faster on 1 thread; at 2,848 rows 4.8x (1 thread), with the
#: same image AUROC, pixel AUROC and PRO.
EXACT_MAX_ROWS = 1_024
#: Cells probed per query in the first pass (of about sqrt(rows) cells) by bundles exported now; the bundle records
#: it (``search_probe``), as its thresholds were fitted with it. The first pass only sets the map away from the hot
#: spots, which the second pass searches again. Measured with 1 thread against 2 cells (scratch, every test image, the
#: int8 bundles): bottle (2,848 rows) 2.32 against 4.09 ms a frame, image AUROC 1.000 both, pixel AUROC 0.9837
#: against 0.9838, PRO 0.9435 against 0.9443; casting (16,000 rows, whitened) 10.68 against 13.91 ms, image AUROC
#: 0.9983 against 0.9984 (exact 0.9984).
DEFAULT_PROBE = 1
#: Cells probed in the second pass, for the frame's patches with the largest first-pass distances.
REFINE_PROBE = 16
#: Share of a frame's patches searched again (the largest first-pass distances), and the fewest searched again.
#: Measured on casting's 16,000-row whitened bank, 937 test images (``make bench-nn``): 10.5 ms a frame on 1 thread,
#: 7.9 on 2, against 18.3 / 12.6 for 8 probes in one pass; image AUROC 0.9883 against 0.9878 (exact 0.9885).
REFINE_SHARE = 1 / 16
REFINE_MIN = 64
#: A pass (and the whitening and centroid steps before it) is split over threads only from this many query-row
#: comparisons: below it, handing work to a second thread costs more than it saves (bottle's 2,848-row bank: 4.4 ms
#: a frame on 2 threads against 4.0 on 1; with the centroid step of its 53 cells also split, 5.22 ms against 4.52).
MIN_THREADED_WORK = 200_000


def make_index(
    bank: np.ndarray, threads: int = 1, whitening: np.ndarray | None = None, probe: int = DEFAULT_PROBE
) -> NearestNeighbourIndex | ClusteredIndex:
    """The exact search for a bank of up to :data:`EXACT_MAX_ROWS` rows, the clustered one above, whose first pass
    probes ``probe`` cells (``whitening``: see :class:`edge_agent.scoring.ThreadedSearch`)."""
    if len(bank) <= EXACT_MAX_ROWS:
        return NearestNeighbourIndex(bank, threads, whitening=whitening)
    return ClusteredIndex(bank, threads, probe=probe, whitening=whitening)


def kmeans(rows: np.ndarray, cells: int, iterations: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means from a seeded sample of rows: (centroids (cells, D), cell of each row)."""
    rng = np.random.default_rng(seed)
    centroids = rows[rng.choice(len(rows), cells, replace=False)].copy()
    for _ in range(iterations):
        assignment = _nearest(rows, centroids)
        for c in range(cells):
            members = rows[assignment == c]
            if len(members):
                centroids[c] = members.mean(axis=0)
    return centroids.astype(np.float32), _nearest(rows, centroids)


def _nearest(rows: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    d2 = (centroids**2).sum(axis=1)[None, :] - 2.0 * rows @ centroids.T
    return np.asarray(d2.argmin(axis=1))


def _nearest_cells(to_centroids: np.ndarray, probe: int) -> np.ndarray:
    """Indices (Q, probe) of each row's ``probe`` smallest entries; repeated argmin for a few (cheaper than a
    partition of every row)."""
    if probe == 1:
        return np.asarray(to_centroids.argmin(axis=1))[:, None]
    if probe > 4:
        return np.argpartition(to_centroids, probe - 1, axis=1)[:, :probe]
    to_centroids = to_centroids.copy()
    rows = np.arange(len(to_centroids))
    picked = np.empty((len(to_centroids), probe), np.int64)
    for i in range(probe):
        picked[:, i] = to_centroids.argmin(axis=1)
        to_centroids[rows, picked[:, i]] = np.inf
    return picked


class ClusteredIndex(ThreadedSearch):
    """Inverted-file nearest-neighbour distances over k-means cells of the bank, in two passes (see the module
    docstring); a query gets the distance to its nearest row among the probed cells. ``refine_probe`` 0 makes it
    one pass."""

    def __init__(
        self,
        bank: np.ndarray,
        threads: int = 1,
        probe: int = DEFAULT_PROBE,
        seed: int = 0,
        whitening: np.ndarray | None = None,
        refine_probe: int = REFINE_PROBE,
    ) -> None:
        self.whitening = whitening
        bank = np.ascontiguousarray(bank, dtype=np.float32)
        n_cells = max(1, round(np.sqrt(len(bank))))
        self.centroids, cell_of = kmeans(bank, n_cells, seed=seed)
        self.probe = min(probe, n_cells)
        self.refine_probe = min(refine_probe, n_cells)
        order = np.argsort(cell_of, kind="stable")
        cells = [bank[order[cell_of[order] == c]] for c in range(n_cells)]
        # Queries carry a trailing 1, so one product gives |row|^2 - 2 query.row for every row of a cell:
        # [-2 rows^T ; |rows|^2] (D + 1, rows), and the same for the centroids.
        self.centroids_aug = _augmented(self.centroids)
        self.cells_aug = [_augmented(rows) for rows in cells]
        self.threads = max(1, threads)

    def distances(self, queries: np.ndarray) -> np.ndarray:
        """L2 distance of each query row (in the patches' own space) to its nearest row in the probed cells."""
        queries = np.asarray(queries, np.float32)
        augmented = np.empty((len(queries), queries.shape[1] + 1), np.float32)
        if self.whitening is not None:
            augmented[:, :-1] = self._map_threads(self._whiten, queries, len(self.whitening))
        else:
            augmented[:, :-1] = queries
        augmented[:, -1] = 1.0
        squared = np.einsum("ij,ij->i", augmented[:, :-1], augmented[:, :-1])
        d2 = self._pass(augmented, self.probe) + squared
        if self.refine_probe > self.probe:
            n_refine = min(len(d2), max(REFINE_MIN, round(REFINE_SHARE * len(d2))))
            top = np.argpartition(d2, len(d2) - n_refine)[len(d2) - n_refine :]
            d2[top] = np.minimum(d2[top], self._pass(augmented[top], self.refine_probe) + squared[top])
        distances: np.ndarray = np.sqrt(np.maximum(d2, 0.0))
        return distances

    def _map_threads(self, fn: Callable[[np.ndarray], np.ndarray], rows: np.ndarray, per_row: int) -> np.ndarray:
        """``fn`` over row shares, one per thread, concatenated; on this thread alone below
        :data:`MIN_THREADED_WORK` comparisons (``per_row`` a row)."""
        if self.threads == 1 or len(rows) < 32 * self.threads or len(rows) * per_row < MIN_THREADED_WORK:
            return fn(rows)
        joined: np.ndarray = np.concatenate(self._run_shares(fn, np.array_split(rows, self.threads)))
        return joined

    def _pass(self, augmented: np.ndarray, probe: int) -> np.ndarray:
        """|row|^2 - 2 query.row for each (whitened, augmented) query's nearest row in its ``probe`` nearest cells:
        its squared distance less |query|^2.

        The (query, cell) pairs are grouped by cell; with threads, each thread takes a contiguous run of cells of
        about equal work, so that every cell's rows are read once per pass whatever the number of threads."""
        to_centroids = self._map_threads(lambda q: q @ self.centroids_aug, augmented, len(self.centroids))
        probed = _nearest_cells(to_centroids, probe).ravel()
        order = np.argsort(probed, kind="stable")  # (query, cell) pairs grouped by cell
        cells = probed[order]
        grouped = np.take(augmented, order // probe, axis=0)  # one gather; each cell then reads a contiguous slice
        nearest = np.empty(len(order), np.float32)
        bounds = np.flatnonzero(np.r_[True, cells[1:] != cells[:-1], True]).tolist()
        runs = [(a, b, int(cells[a])) for a, b in pairwise(bounds)]

        def scan(part: list[tuple[int, int, int]]) -> None:
            for start, stop, cell in part:
                rows = self.cells_aug[cell]
                if rows.shape[1] == 0:
                    nearest[start:stop] = np.inf
                else:
                    np.min(grouped[start:stop] @ rows, axis=1, out=nearest[start:stop])

        work = np.cumsum([(b - a) * self.cells_aug[c].shape[1] for a, b, c in runs])
        if self.threads == 1 or len(runs) < 2 * self.threads or work[-1] < MIN_THREADED_WORK:
            scan(runs)
        else:
            cuts = np.searchsorted(work, work[-1] * np.arange(1, self.threads) / self.threads).tolist()
            self._run_shares(scan, [runs[a:b] for a, b in pairwise([0, *cuts, len(runs)])])
        best = np.empty(len(order), np.float32)
        best[order] = nearest  # back to (query, probe) order
        result: np.ndarray = best.reshape(len(augmented), probe).min(axis=1)
        return result


def _augmented(rows: np.ndarray) -> np.ndarray:
    """[-2 rows^T ; |rows|^2]: (D + 1, N) float32 from float32 rows, for queries with a trailing 1."""
    augmented = np.empty((rows.shape[1] + 1, len(rows)), np.float32)
    augmented[:-1] = -2.0 * rows.T
    augmented[-1] = np.einsum("ij,ij->i", rows, rows)
    return augmented

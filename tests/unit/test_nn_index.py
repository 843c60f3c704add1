"""The clustered (inverted-file) nearest-neighbour search against the exact one."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.nn_index import EXACT_MAX_ROWS, ClusteredIndex, kmeans, make_index
from edge_agent.scoring import NearestNeighbourIndex


def mixture(rng: np.random.Generator, rows: int, dim: int = 24, modes: int = 40) -> np.ndarray:
    centres = rng.normal(0.0, 4.0, (modes, dim))
    return (centres[rng.integers(0, modes, rows)] + rng.normal(0.0, 1.0, (rows, dim))).astype(np.float32)


def test_clustered_distances_are_never_below_exact_and_mostly_equal():
    rng = np.random.default_rng(0)
    bank = mixture(rng, 20_000)
    queries = mixture(rng, 1_500)
    exact = NearestNeighbourIndex(bank).distances(queries)
    index = ClusteredIndex(bank, threads=1)
    approx = index.distances(queries)
    assert len(index.cells_t) == round(np.sqrt(len(bank))) and sum(c.shape[1] for c in index.cells_t) == len(bank)
    assert np.all(approx >= exact - 1e-3)  # a minimum over a subset of the bank
    assert np.mean(np.isclose(approx, exact, rtol=1e-5, atol=1e-5)) >= 0.95
    assert np.allclose(
        ClusteredIndex(bank, threads=2).distances(queries), approx, rtol=1e-5
    )  # threads split the queries
    assert ClusteredIndex(bank, probe=len(index.cells_t)).distances(queries) == pytest.approx(
        exact, rel=1e-4, abs=1e-4
    )  # probing every cell is the exact search


def test_kmeans_is_seeded_and_assigns_every_row_to_its_nearest_centroid():
    rng = np.random.default_rng(1)
    rows = mixture(rng, 3_000, modes=5)
    centroids, cell_of = kmeans(rows, 5)
    again, _ = kmeans(rows, 5)
    assert np.array_equal(centroids, again)
    d = ((rows[:, None, :] - centroids[None]) ** 2).sum(-1)
    assert np.array_equal(cell_of, d.argmin(axis=1))


def test_small_banks_stay_exact():
    rng = np.random.default_rng(2)
    assert isinstance(make_index(mixture(rng, 1_000)), NearestNeighbourIndex)
    assert isinstance(make_index(mixture(rng, EXACT_MAX_ROWS + 1)), ClusteredIndex)

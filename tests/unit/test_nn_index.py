"""The clustered (inverted-file) nearest-neighbour search against the exact one."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.manifest import PatchCoreParams
from edge_agent.nn_index import (
    DEFAULT_PROBE,
    EXACT_MAX_ROWS,
    REFINE_MIN,
    REFINE_PROBE,
    REFINE_SHARE,
    ClusteredIndex,
    kmeans,
    make_index,
)
from edge_agent.scoring import NearestNeighbourIndex


def mixture(rng: np.random.Generator, rows: int, dim: int = 24, modes: int = 40) -> np.ndarray:
    centres = rng.normal(0.0, 4.0, (modes, dim))
    return (centres[rng.integers(0, modes, rows)] + rng.normal(0.0, 1.0, (rows, dim))).astype(np.float32)


def test_clustered_distances_are_never_below_exact_and_mostly_equal():
    rng = np.random.default_rng(0)
    bank = mixture(rng, 20_000)
    queries = mixture(rng, 1_500)
    exact = NearestNeighbourIndex(bank).distances(queries)
    index = ClusteredIndex(bank, threads=1, refine_probe=0)  # one pass
    approx = index.distances(queries)
    assert len(index.cells_aug) == round(np.sqrt(len(bank))) and sum(c.shape[1] for c in index.cells_aug) == len(bank)
    assert np.all(approx >= exact - 1e-3)  # a minimum over a subset of the bank
    share = np.mean(np.isclose(approx, exact, rtol=1e-5, atol=1e-5))
    wider = ClusteredIndex(bank, probe=8, refine_probe=0).distances(queries)
    assert np.mean(np.isclose(wider, exact, rtol=1e-5, atol=1e-5)) >= max(0.95, share)  # more cells, nearer exact
    assert ClusteredIndex(bank, probe=len(index.cells_aug)).distances(queries) == pytest.approx(
        exact, rel=1e-4, abs=1e-4
    )  # probing every cell is the exact search


def test_the_second_pass_searches_the_largest_distances_again_in_more_cells():
    rng = np.random.default_rng(3)
    bank = mixture(rng, 20_000)
    queries = np.concatenate([mixture(rng, 1_500), mixture(rng, 100) + 3.0])  # 100 off the modes: the largest
    exact = NearestNeighbourIndex(bank).distances(queries)
    first = ClusteredIndex(bank, refine_probe=0).distances(queries)
    two_pass = ClusteredIndex(bank).distances(queries)
    n_refine = max(REFINE_MIN, round(REFINE_SHARE * len(queries)))
    top = np.argsort(first)[-n_refine:]
    rest = np.setdiff1d(np.arange(len(queries)), top)
    again = ClusteredIndex(bank, probe=REFINE_PROBE, refine_probe=0).distances(queries[top])
    np.testing.assert_allclose(two_pass[top], np.minimum(first[top], again), rtol=1e-5)
    np.testing.assert_array_equal(two_pass[rest], first[rest])  # the others keep their first-pass distance
    assert np.all(two_pass >= exact - 1e-3) and np.all(two_pass <= first + 1e-6)
    # the distances that decide an image score come out nearer the exact ones than a one-pass search gives them
    assert np.abs(two_pass[top] - exact[top]).mean() < 0.5 * np.abs(first[top] - exact[top]).mean()
    for threads in (2, 3):  # threads share the cells of a pass: the same distances
        np.testing.assert_allclose(ClusteredIndex(bank, threads=threads).distances(queries), two_pass, rtol=1e-5)


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


def test_a_bundle_is_searched_with_the_first_pass_it_was_calibrated_with():
    rng = np.random.default_rng(2)
    bank = mixture(rng, EXACT_MAX_ROWS + 500)
    assert isinstance(make_index(bank[:EXACT_MAX_ROWS]), NearestNeighbourIndex)  # small banks: exact
    assert make_index(bank).probe == DEFAULT_PROBE and make_index(bank, probe=3).probe == 3
    fields = {"memory_bank": "b.npy", "bank_size": len(bank), "pool": 1, "blur_sigma": 2.0}
    fields |= {"score_top_fraction": None, "patch_taps": 2}
    assert PatchCoreParams.model_validate(fields).search_probe == 2  # bundles from before the field probed 2 cells
    assert PatchCoreParams.model_validate({**fields, "search_probe": 1}).search_probe == 1

import numpy as np
import pytest

from edge_agent.nn_index import ClusteredIndex, make_index
from edge_agent.preprocess import PreprocessSpec, load_prepared
from edge_agent.scoring import (
    Calibration,
    NearestNeighbourIndex,
    distance_map,
    fit_calibration,
    image_score,
    patch_embedding,
    reconstruction_map,
    ssim_map,
)
from training.models.patchcore import build_memory_bank, fit_whitening, greedy_coreset


def test_nearest_neighbour_matches_brute_force():
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((300, 24)).astype(np.float32)
    queries = rng.standard_normal((50, 24)).astype(np.float32)
    brute = np.sqrt(((queries[:, None, :] - bank[None]) ** 2).sum(-1)).min(1)
    got = NearestNeighbourIndex(bank, chunk=7).distances(queries)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, brute, rtol=1e-4, atol=1e-4)
    assert NearestNeighbourIndex(bank).distances(bank[:5]).max() < 1e-2


@pytest.mark.parametrize("threads", [2, 3])
def test_threaded_search_gives_the_same_distances(threads):
    rng = np.random.default_rng(1)
    bank = rng.standard_normal((400, 16)).astype(np.float32)
    queries = rng.standard_normal((785, 16)).astype(np.float32)  # not a multiple of the thread count
    single = NearestNeighbourIndex(bank, chunk=100).distances(queries)
    threaded = NearestNeighbourIndex(bank, threads=threads, chunk=100).distances(queries)
    np.testing.assert_allclose(threaded, single, rtol=1e-5)  # BLAS blocks differ by rounding only


def test_patch_embedding_upsamples_coarse_maps():
    fine = np.ones((8, 8, 4), np.float32)
    coarse = np.arange(16 * 6, dtype=np.float32).reshape(4, 4, 6)
    patches = patch_embedding([fine, coarse], pool=3)
    assert patches.shape == (64, 10)
    np.testing.assert_allclose(patches[:, :4], 1.0)


def test_distance_map_has_output_size_and_peak_at_defect():
    distances = np.zeros(16 * 16, np.float32)
    distances[5 * 16 + 10] = 1.0
    amap = distance_map(distances, (16, 16), 64, sigma=2.0)
    assert amap.shape == (64, 64)
    y, x = np.unravel_index(amap.argmax(), amap.shape)
    assert abs(y - 22) <= 3 and abs(x - 42) <= 3


def test_ssim_and_reconstruction_map_on_real_image(fixture_images):
    image = load_prepared(fixture_images / "bottle_good_000.png", PreprocessSpec(64)).astype(np.float32) / 255
    np.testing.assert_allclose(ssim_map(image, image), 1.0, atol=1e-5)
    assert reconstruction_map(image, image, 0.5).max() < 1e-5
    damaged = image.copy()
    damaged[20:30, 20:30] = 0.0
    rmap = reconstruction_map(image, damaged, 0.5)
    assert rmap[22:28, 22:28].mean() > 10 * rmap[45:60, 45:60].mean()


def test_calibration_never_collapses_to_the_minimum():
    scores = np.array([1.0, 1.1, 1.2, 1.3, 5.0])
    cal = fit_calibration(scores, None, "mean_std", k=3.0)
    assert cal.threshold >= np.quantile(scores, 0.99)
    same = fit_calibration(np.full(10, 2.0), None, "mean_std")
    assert same.threshold > 2.0
    q = fit_calibration(scores, None, "quantile", quantile=0.9)
    assert q.threshold > q.center
    assert float(q.normalise(q.threshold)) == pytest.approx(0.5)
    assert float(q.normalise(q.center)) == 0.0


def test_calibration_pixel_threshold_and_round_trip():
    maps = np.random.default_rng(0).random((4, 8, 8))
    cal = fit_calibration(np.array([1.0, 2.0, 3.0]), maps, pixel_quantile=0.99)
    assert cal.note is not None  # three scores cannot resolve a 1 % false-alarm rate
    assert cal.pixel_threshold == pytest.approx(np.quantile(maps, 0.99))
    assert Calibration.from_dict(cal.to_dict()) == cal
    with pytest.raises(ValueError, match="without validation scores"):
        fit_calibration(np.array([]), None)


def test_greedy_coreset_covers_clusters():
    rng = np.random.default_rng(1)
    centres = np.array([[0, 0], [50, 0], [0, 50], [50, 50]], np.float32)
    points = np.concatenate([c + rng.standard_normal((200, 2)).astype(np.float32) for c in centres])
    chosen = points[greedy_coreset(points, 4, projection_dim=None)]
    nearest_centre = np.argmin(((chosen[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    assert sorted(nearest_centre.tolist()) == [0, 1, 2, 3]
    assert len(set(greedy_coreset(points, 50).tolist())) == 50


def test_image_score_is_the_max_or_the_mean_of_the_top_fraction():
    amap = np.arange(100, dtype=np.float32).reshape(10, 10)
    assert image_score(amap) == 99.0
    assert image_score(amap, 0.05) == pytest.approx((95 + 96 + 97 + 98 + 99) / 5)
    assert image_score(amap, 0.001) == 99.0  # at least one pixel


def _pixels_with_position(images: np.ndarray) -> np.ndarray:
    """Toy embedding: one 'patch' per pixel = (value, row, column), so turned images give other patches."""
    n, h, w = images.shape[:3]
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    pos = np.broadcast_to(np.stack([rows, cols], -1), (n, h, w, 2))
    return np.concatenate([images[..., :1].astype(np.float32), pos], -1).reshape(n, h * w, 3)


def test_memory_bank_adds_turned_copies_of_the_images():
    images = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3, 1)
    plain, plain_sources, no_whitening, _ = build_memory_bank(_pixels_with_position, images, 1.0, 1000, None)
    turned, sources, _, _ = build_memory_bank(_pixels_with_position, images, 1.0, 1000, None, rotations=[90, 180])
    assert no_whitening is None
    assert plain.shape == (18, 3) and turned.shape == (54, 3)
    assert sorted(plain_sources.tolist()) == [0] * 9 + [1] * 9
    assert np.bincount(sources).tolist() == [27, 27]  # every orientation of each image is traced to it
    as_set = {tuple(row) for row in turned.tolist()}
    # pixel (0, 0) of image 0 lands at (2, 0) after a quarter turn counter-clockwise and at (2, 2) after a half turn
    assert {(0.0, 0.0, 0.0), (0.0, 2.0, 0.0), (0.0, 2.0, 2.0)} <= as_set
    capped = build_memory_bank(_pixels_with_position, images, 1.0, 5, None, rotations=[270]).rows
    assert capped.shape == (10, 3)  # max_bank applies per orientation


def _anisotropic(rng: np.random.Generator, rows: int) -> np.ndarray:
    """Rows whose spread differs by 100x between directions, on axes turned away from the coordinate axes."""
    turn, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    return (rng.standard_normal((rows, 6)) * np.array([10.0, 5.0, 1.0, 1.0, 0.3, 0.1]) @ turn + 3.0).astype(np.float32)


def test_whitening_evens_out_the_directions_normal_patches_vary_in():
    rng = np.random.default_rng(0)
    patches = _anisotropic(rng, 20_000)
    whitening = fit_whitening(patches, shrink=0.0)
    np.testing.assert_allclose(whitening, whitening.T, atol=1e-5)
    np.testing.assert_allclose(np.cov((patches @ whitening).T), np.eye(6), atol=0.05)
    shrunk = np.linalg.eigvalsh(np.cov((patches @ fit_whitening(patches)).T))  # default shrink: 0.1 x mean variance
    assert shrunk.max() < 1.0 and shrunk.min() > 0.0
    # the mean variance is 21.2: the thinnest direction (variance 0.01) ends near 0.01 / 2.13, the widest near 1
    assert shrunk.min() == pytest.approx(0.01 / (0.01 + 2.118), rel=0.1) and shrunk.max() > 0.95


def test_a_whitened_search_is_the_l2_search_of_whitened_rows():
    rng = np.random.default_rng(1)
    patches = _anisotropic(rng, 3_000)
    whitening = fit_whitening(patches)
    bank, queries = patches[:2_000] @ whitening, _anisotropic(rng, 200)
    brute = np.linalg.norm((queries @ whitening)[:, None, :] - bank[None], axis=-1).min(1)
    np.testing.assert_allclose(
        NearestNeighbourIndex(bank, whitening=whitening).distances(queries), brute, rtol=1e-4, atol=1e-4
    )
    clustered = ClusteredIndex(bank, probe=10_000, whitening=whitening)  # every cell probed: exact
    np.testing.assert_allclose(clustered.distances(queries), brute, rtol=1e-4, atol=1e-4)
    assert make_index(bank, whitening=whitening).whitening is whitening


def test_a_whitened_bank_fits_its_whitening_on_the_upright_patches():
    images = np.random.default_rng(2).integers(0, 255, (4, 5, 5, 1)).astype(np.uint8)
    bank = build_memory_bank(_pixels_with_position, images, 1.0, 1000, None, rotations=[90], whiten=True)
    upright = _pixels_with_position(images).reshape(-1, 3)
    assert bank.whitening is not None
    np.testing.assert_allclose(bank.whitening, fit_whitening(upright), rtol=1e-5)
    # the rows are whitened patches: the upright orientation's set of rows is its patches times the matrix
    expected = {tuple(np.round(r, 4)) for r in (upright @ bank.whitening).tolist()}
    assert {tuple(np.round(r, 4)) for r in bank.rows[: len(upright)].tolist()} == expected


@pytest.mark.parametrize("shape", ["smooth", "one_peak", "flat", "ties", "small"])
def test_largest_is_exactly_the_top_k_whatever_the_map(shape):
    import cv2

    from edge_agent.scoring import largest

    rng = np.random.default_rng(7)
    values = {
        "smooth": cv2.GaussianBlur(rng.random((448, 448), np.float32), (17, 17), 4).ravel(),
        "one_peak": np.r_[np.zeros(200_000, np.float32), np.float32(5.0)],  # the sample misses the peak
        "flat": np.full(200_704, 3.0, np.float32),
        "ties": rng.integers(0, 4, 200_704).astype(np.float32),
        "small": rng.random(50).astype(np.float32),
    }[shape]
    for k in (1, 7, 2007, values.size // 3, values.size):
        k = min(k, values.size)
        expected = np.sort(values)[values.size - k :]
        assert np.array_equal(np.sort(largest(values, k)), expected)

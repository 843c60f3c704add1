import cv2
import numpy as np
import pytest

from edge_agent.errors import ImageDecodeError
from edge_agent.preprocess import (
    MAX_SIDE,
    PreprocessSpec,
    decode_image,
    jpeg_reduction,
    load_prepared,
    normalise,
    prepare,
    read_image,
    resize,
    resize_mask,
)


def test_reads_real_png_as_rgb(fixture_images):
    image = read_image(fixture_images / "bottle_good_000.png")
    bgr = cv2.imread(str(fixture_images / "bottle_good_000.png"))
    assert image.dtype == np.uint8 and image.shape == (128, 128, 3)
    np.testing.assert_array_equal(image, bgr[:, :, ::-1])


def test_gray_and_rgb_inputs_both_accepted(fixture_images):
    rgb = read_image(fixture_images / "casting_ok.jpeg")
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    for spec in (PreprocessSpec(64, "rgb"), PreprocessSpec(64, "gray")):
        a, b = prepare(rgb, spec), prepare(gray, spec)
        assert a.shape == b.shape == (64, 64, spec.channels)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


@pytest.mark.parametrize("policy", ["stretch", "center_crop", "letterbox"])
def test_resize_policies_keep_mask_aligned(policy, fixture_images):
    image = read_image(fixture_images / "tire_good_000.png")  # 75 x 100, portrait
    out = resize(image, 32, policy)
    assert out.shape == (32, 32, 3)
    mask = np.zeros(image.shape[:2], np.uint8)
    mask[40:60, 30:50] = 255
    resized = resize_mask(mask, 32, policy)
    marked = image.copy()
    marked[mask > 0] = (255, 0, 255)
    diff = np.abs(resize(marked, 32, policy).astype(int) - out.astype(int)).sum(axis=2) > 60
    assert resized.sum() > 0
    assert (diff & resized).sum() >= 0.6 * resized.sum()


def test_letterbox_pads_with_black(fixture_images):
    image = read_image(fixture_images / "tire_good_000.png")
    out = resize(image, 40, "letterbox")
    assert out[:, :3].max() == 0 and out[:, -3:].max() == 0


def test_normalisation_is_affine_without_guessing():
    spec = PreprocessSpec(4, offset=127.0, scale=128.0)
    batch = np.array([[[[0, 127, 255]]]], np.uint8)
    np.testing.assert_allclose(normalise(batch, spec), [[[[-127 / 128, 0.0, 1.0]]]])
    assert normalise(np.ones((1, 1, 1, 3), np.uint8), PreprocessSpec(4)).max() == pytest.approx(1 / 255)


def test_sixteen_bit_alpha_and_palette(tmp_path):
    deep = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    out = read_image(tmp_path / "deep.png")
    assert out.dtype == np.uint8 and out.shape == (64, 64, 3)
    np.testing.assert_array_equal(out[:, :, 0], (deep >> 8).astype(np.uint8))
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 2] = 200
    cv2.imwrite(str(tmp_path / "alpha.png"), rgba)
    assert read_image(tmp_path / "alpha.png")[0, 0].tolist() == [200, 0, 0]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty file"),
        (b"this is not an image at all", "not a decodable image"),
        (np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(), "not a decodable image"),
    ],
)
def test_bad_bytes_give_clear_errors(payload, reason):
    with pytest.raises(ImageDecodeError, match=reason) as err:
        decode_image(payload, "cam1/frame.png")
    assert "cam1/frame.png" in str(err.value)


def test_truncated_png_and_jpeg_are_rejected(fixture_images, tmp_path):
    for name in ("bottle_good_000.png", "casting_ok.jpeg"):
        data = (fixture_images / name).read_bytes()
        bad = tmp_path / name
        bad.write_bytes(data[: len(data) // 3])
        try:
            image = read_image(bad)
        except ImageDecodeError as err:
            assert name in str(err)
        else:  # libjpeg may decode a truncated JPEG partly (grey fill); it must still be a full image
            assert image.shape[2] == 3


def test_decompression_bomb_header_is_refused(fixture_images):
    data = bytearray((fixture_images / "bottle_good_000.png").read_bytes())
    data[16:20] = (20000).to_bytes(4, "big")
    data[20:24] = (20000).to_bytes(4, "big")
    with pytest.raises(ImageDecodeError, match=f"exceeds the {MAX_SIDE} px limit"):
        decode_image(bytes(data), "bomb.png")


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ImageDecodeError, match=r"nope\.png: cannot read file"):
        read_image(tmp_path / "nope.png")


def test_spec_round_trips_through_dict():
    spec = PreprocessSpec(96, "gray", "letterbox", 127.0, 128.0)
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(TypeError):
        PreprocessSpec.from_dict({**spec.to_dict(), "mystery": 1})


def test_letterbox_of_a_long_thin_image_stays_small():
    """1 x 8192 (the largest side accepted): scaled first, so no 8192 x 8192 canvas is ever built."""
    import tracemalloc

    image = np.full((1, 8192, 3), 200, np.uint8)
    tracemalloc.start()
    out = resize(image, 224, "letterbox")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out.shape == (224, 224, 3)
    bright_rows = np.flatnonzero(out[:, :, 0].max(axis=1))
    assert list(bright_rows) == [111] and out[111, :, 0].min() == 200  # one full row in the middle, black bars
    assert peak < 2 * 2**20, f"{peak / 2**20:.0f} MiB allocated"
    mask = resize_mask(np.ones((1, 8192), np.uint8), 224, "letterbox")
    assert mask.shape == (224, 224) and list(np.flatnonzero(mask.any(axis=1))) == [111] and mask[111].all()


def _big_jpeg(fixture_images, width: int, height: int) -> bytes:
    """A real bottle picture enlarged to a camera-sized JPEG."""
    image = cv2.imread(str(fixture_images / "bottle_good_000.png"))
    big = cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC)
    ok, data = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return data.tobytes()


@pytest.mark.parametrize(("min_side", "factor"), [(None, 1), (640, 1), (320, 2), (200, 4), (100, 8), (40, 8)])
def test_large_jpeg_decoded_reduced_down_to_the_model_side(fixture_images, min_side, factor):
    data = _big_jpeg(fixture_images, 1000, 800)
    assert jpeg_reduction(data, min_side) == factor
    image = decode_image(data, "big.jpg", min_side)
    assert image.shape == (-(-800 // factor), -(-1000 // factor), 3)
    assert min(image.shape[:2]) >= (min_side or 0)


def test_reduced_jpeg_decode_prepares_the_same_picture(fixture_images):
    data = _big_jpeg(fixture_images, 1024, 1024)
    spec = PreprocessSpec(128, "rgb")
    full = prepare(decode_image(data, "big.jpg"), spec).astype(np.float32)
    reduced = prepare(decode_image(data, "big.jpg", spec.size), spec).astype(np.float32)
    assert jpeg_reduction(data, spec.size) == 8
    assert np.abs(full - reduced).mean() < 2.0  # grey levels of 255: the same picture, filtered a little differently


def test_png_and_small_jpeg_never_reduced(fixture_images, tmp_path):
    png = (fixture_images / "bottle_good_000.png").read_bytes()
    small_jpeg = (fixture_images / "casting_ok.jpeg").read_bytes()
    assert jpeg_reduction(png, 16) == 1
    assert jpeg_reduction(small_jpeg, 300) == 1
    np.testing.assert_array_equal(decode_image(png, "p.png", 16), decode_image(png, "p.png"))
    path = tmp_path / "big.jpg"
    path.write_bytes(_big_jpeg(fixture_images, 512, 512))
    assert read_image(path, 128).shape == (128, 128, 3)
    assert load_prepared(path, PreprocessSpec(128, "rgb")).shape == (128, 128, 3)


@pytest.mark.parametrize("layout", ["rgb", "gray", "rgba", "deep"])
def test_png_decoded_by_libspng_matches_opencv(layout, fixture_images, monkeypatch):
    """8-bit RGB PNGs take libspng; its pixels equal OpenCV's, and other PNGs still go to OpenCV."""
    from edge_agent import preprocess

    bgr = cv2.imread(str(fixture_images / "bottle_good_000.png"))
    image = {
        "rgb": bgr,
        "gray": cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY),
        "rgba": cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA),
        "deep": bgr.astype(np.uint16) * 257 + 3,
    }[layout]
    data = cv2.imencode(".png", image)[1].tobytes()
    fast = preprocess._decode_png_fast(data)
    assert (fast is not None) == (layout == "rgb")
    decoded = decode_image(data)
    monkeypatch.setattr(preprocess, "spng_decode", None)
    assert preprocess._decode_png_fast(data) is None
    np.testing.assert_array_equal(decoded, decode_image(data))
    assert decoded.dtype == np.uint8 and decoded.shape == (*bgr.shape[:2], 3)


def test_png_libspng_refuses_falls_back_to_opencv(fixture_images):
    """A PNG whose image data is cut off is refused with the file's name, whichever decoder tries first."""
    data = (fixture_images / "bottle_good_000.png").read_bytes()
    cut = data[:33] + data[-12:]  # signature and IHDR, then IEND: well-formed chunks, no image data
    with pytest.raises(ImageDecodeError, match=r"cam/cut\.png"):
        decode_image(cut, "cam/cut.png")

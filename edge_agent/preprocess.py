"""The one pre-processing path used by training, export and the edge agent.

Images are decoded to RGB uint8, converted to the model's colour mode, resized by a fixed policy, and
normalised to float32 with a fixed affine map. Nothing here guesses the pixel scale: inputs are always
uint8 0..255 after decoding.

>>> spec = PreprocessSpec(size=64, color="rgb")
>>> img = np.zeros((100, 80, 3), np.uint8)
>>> prepare(img, spec).shape
(64, 64, 3)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from edge_agent.errors import ImageDecodeError

try:  # libspng: 8-bit RGB PNGs in 0.7x the time of OpenCV's libpng (bench-decode), the GIL released as OpenCV does
    from imagecodecs import spng_decode
except ImportError:  # pragma: no cover - a core dependency; OpenCV reads every PNG without it
    spng_decode = None  # type: ignore[assignment]

#: File name suffixes read as images (lower case), by the agent, training and the review page alike.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
ColorMode = Literal["rgb", "gray"]
ResizePolicy = Literal["stretch", "center_crop", "letterbox"]

#: Largest image side accepted before decoding (guards against decompression bombs).
MAX_SIDE = 8192


@dataclass(frozen=True)
class PreprocessSpec:
    """How a raw image becomes model input; ships inside every model folder and bundle."""

    size: int = 224
    color: ColorMode = "rgb"
    resize: ResizePolicy = "stretch"
    #: normalised = (pixel - offset) / scale, applied per channel to uint8 0..255 values.
    offset: float = 0.0
    scale: float = 255.0

    @property
    def channels(self) -> int:
        """Number of channels of the prepared image."""
        return 3 if self.color == "rgb" else 1

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON manifests."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        return cls(**data)

    def with_normalisation(self, offset: float, scale: float) -> PreprocessSpec:
        """Copy with another affine normalisation (each model family fixes its own)."""
        return PreprocessSpec(self.size, self.color, self.resize, offset, scale)


#: JPEG scale factors libjpeg decodes to directly (in the DCT domain), largest first, and their OpenCV flags.
_JPEG_REDUCTIONS = (
    (8, cv2.IMREAD_REDUCED_COLOR_8),
    (4, cv2.IMREAD_REDUCED_COLOR_4),
    (2, cv2.IMREAD_REDUCED_COLOR_2),
)


def jpeg_reduction(data: bytes, min_side: int | None) -> int:
    """The largest factor (1, 2, 4 or 8) a JPEG can be decoded smaller by and keep both sides >= ``min_side``;
    1 for other formats or without ``min_side``."""
    if not min_side or data[:2] != b"\xff\xd8":
        return 1
    size = _jpeg_size(data)
    if size is None:
        return 1
    return next((r for r, _ in _JPEG_REDUCTIONS if min(size) // r >= min_side), 1)


def decode_image(data: bytes, name: str = "<bytes>", min_side: int | None = None) -> np.ndarray:
    """Decode encoded image bytes to an RGB uint8 array; raise ImageDecodeError with a reason.

    With ``min_side`` (the model's input size) a JPEG at least twice that size is decoded at 1/2, 1/4 or 1/8
    scale by libjpeg itself, several times faster than a full decode, keeping both sides >= ``min_side``.
    Training reads its images the same way (:func:`load_prepared`), so model and agent see the same pixels.
    """
    if not data:
        raise ImageDecodeError(f"{name}: empty file")
    _check_declared_size(data, name)
    fast = _decode_png_fast(data)
    if fast is not None:
        return fast
    reduction = jpeg_reduction(data, min_side)
    flags = dict(_JPEG_REDUCTIONS).get(reduction, cv2.IMREAD_UNCHANGED)
    if reduction > 1:
        flags |= cv2.IMREAD_IGNORE_ORIENTATION  # as IMREAD_UNCHANGED: pixels as stored, EXIF not applied
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if image is None or image.size == 0:
        raise ImageDecodeError(f"{name}: not a decodable image (truncated, corrupt or unknown format)")
    return to_rgb_uint8(image, name)


def _decode_png_fast(data: bytes) -> np.ndarray | None:
    """An 8-bit RGB PNG decoded by libspng; None for anything else or on any libspng error.

    libpng (OpenCV) decodes such a file to the same pixels, 1.2-1.5x slower (``make bench-decode``). Gray PNGs
    decode as fast either way; palette, alpha and 16-bit PNGs and files libspng refuses go to OpenCV.
    """
    if spng_decode is None or data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 26 or data[24:26] != b"\x08\x02":
        return None
    try:
        image: np.ndarray = spng_decode(data)
    except Exception:  # truncated or damaged: OpenCV decides, as for every other file
        return None
    if image.ndim != 3 or image.dtype != np.uint8 or image.shape[2] not in (3, 4):
        return None
    return image if image.shape[2] == 3 else np.ascontiguousarray(image[:, :, :3])  # a tRNS chunk: alpha dropped


def read_image(path: str | Path, min_side: int | None = None) -> np.ndarray:
    """Read an image file to RGB uint8 (see :func:`decode_image` for ``min_side``); raise ImageDecodeError naming
    the file on any failure."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ImageDecodeError(f"{path}: cannot read file ({err.strerror})") from err
    return decode_image(data, str(path), min_side)


def to_rgb_uint8(image: np.ndarray, name: str = "<array>") -> np.ndarray:
    """Convert a decoded OpenCV array (gray, BGR, BGRA, 16-bit) to RGB uint8 HxWx3."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageDecodeError(f"{name}: unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim != 3:
        raise ImageDecodeError(f"{name}: unsupported array shape {image.shape}")
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise ImageDecodeError(f"{name}: unsupported channel count {channels}")


def prepare(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Colour-convert and resize an RGB (or gray) uint8 image to the model's HxWxC uint8 input."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3) or 0 in image.shape:
        raise ImageDecodeError(f"prepare takes RGB or gray uint8 images, not {image.dtype} {image.shape}")
    if image.shape[2] == 1 and spec.color == "rgb":
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 3 and spec.color == "gray":
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[:, :, None]
    resized = resize(image, spec.size, spec.resize)
    if resized.ndim == 2:
        resized = resized[:, :, None]
    return np.ascontiguousarray(resized)


def resize(image: np.ndarray, size: int, policy: ResizePolicy) -> np.ndarray:
    """Resize to size x size: stretch, centre crop to a square first, or letterbox with black bars."""
    h, w = image.shape[:2]
    if policy == "center_crop":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        image = image[top : top + side, left : left + side]
    shrink = image.shape[0] > size or image.shape[1] > size
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    if policy == "letterbox":
        return letterbox(image, size, interp)
    out = cv2.resize(image, (size, size), interpolation=interp)
    return out if out.ndim == 3 else out[:, :, None]


def letterbox(image: np.ndarray, size: int, interp: int) -> np.ndarray:
    """Scale the longest side to ``size``, then centre on a black size x size canvas (memory ~ size^2 only)."""
    h, w = image.shape[:2]
    new_h, new_w = max(1, round(h * size / max(h, w))), max(1, round(w * size / max(h, w)))
    scaled = cv2.resize(image, (new_w, new_h), interpolation=interp)
    if scaled.ndim == 2:
        scaled = scaled[:, :, None]
    canvas = np.zeros((size, size, scaled.shape[2]), image.dtype)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = scaled
    return canvas


def resize_mask(mask: np.ndarray, size: int, policy: ResizePolicy) -> np.ndarray:
    """Resize a ground-truth mask with the image's geometry; returns bool size x size."""
    if mask.ndim == 3:
        mask = mask[:, :, 0]
    m = (mask > 0).astype(np.uint8)[:, :, None] * 255
    h, w = m.shape[:2]
    if policy == "center_crop":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        m = m[top : top + side, left : left + side]
    elif policy == "letterbox":
        return letterbox(m, size, cv2.INTER_NEAREST)[:, :, 0] > 127
    out = cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST)
    return out > 127


def normalise(batch: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Map prepared uint8 images to float32 model input: (x - offset) / scale."""
    return (batch.astype(np.float32) - np.float32(spec.offset)) / np.float32(spec.scale)


def load_prepared(path: str | Path, spec: PreprocessSpec) -> np.ndarray:
    """Read a file and prepare it for the model (uint8 HxWxC); large JPEGs decoded reduced, as the agent does."""
    return prepare(read_image(path, spec.size), spec)


def _check_declared_size(data: bytes, name: str) -> None:
    """Refuse, before decoding, other formats, PNG chunks longer than the file, and sides beyond MAX_SIDE.

    OpenCV also decodes GIF, JPEG 2000, AVIF, PNM, HDR and more, where a 1 KiB file can declare 20000x20000;
    its PNG reader allocates a chunk's declared length (a flipped length byte in a 3 KiB file: 3 GB).
    """
    size = _declared_size(data)
    if size is None:
        msg = f"{name}: not a decodable image (truncated, corrupt or unknown format; PNG, JPEG, BMP, TIFF or WebP)"
        raise ImageDecodeError(msg)
    h, w = size
    if max(h, w) > MAX_SIDE:
        raise ImageDecodeError(f"{name}: declared size {w}x{h} exceeds the {MAX_SIDE} px limit")


def _declared_size(data: bytes) -> tuple[int, int] | None:
    """Height and width from a PNG, JPEG, BMP, TIFF or WebP header; None for anything else."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return _png_size(data)
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    if data[:2] == b"BM" and len(data) >= 26:
        if int.from_bytes(data[14:18], "little") == 12:  # OS/2 header: 16-bit sides
            return int.from_bytes(data[20:22], "little"), int.from_bytes(data[18:20], "little")
        w, h = int.from_bytes(data[18:22], "little", signed=True), int.from_bytes(data[22:26], "little", signed=True)
        return abs(h), abs(w)
    if data[:4] in (b"II*\0", b"MM\0*"):
        return _tiff_size(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8X":  # extended format: the canvas bounds every frame
            return 1 + int.from_bytes(data[27:30], "little"), 1 + int.from_bytes(data[24:27], "little")
        if chunk == b"VP8L" and data[20] == 0x2F:
            bits = int.from_bytes(data[21:25], "little")
            return 1 + (bits >> 14 & 0x3FFF), 1 + (bits & 0x3FFF)
        if chunk == b"VP8 ":
            return int.from_bytes(data[28:30], "little") & 0x3FFF, int.from_bytes(data[26:28], "little") & 0x3FFF
    return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    """IHDR's size, or None when a chunk runs past the end (OpenCV would allocate the declared chunk length)."""
    i = 8
    while i + 8 <= len(data):
        end = i + 12 + int.from_bytes(data[i : i + 4], "big")
        if end > len(data):
            return None
        if data[i + 4 : i + 8] == b"IEND":
            break
        i = end
    return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")


_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the markers as libjpeg does (stray bytes and 0xFF fill skipped, any segment size) to the frame header."""
    i, n = 2, len(data)
    while i + 1 < n:
        marker = data[i + 1]
        if data[i] != 0xFF or marker in (0xFF, 0x00):
            i += 1
        elif marker in _SOF:
            return (int.from_bytes(data[i + 5 : i + 7], "big"), int.from_bytes(data[i + 7 : i + 9], "big"))
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            i += 2
        elif marker in (0xD8, 0xD9, 0xDA):  # SOI again, EOI, or scan data before any frame header
            return None
        else:
            i += 2 + max(2, int.from_bytes(data[i + 2 : i + 4], "big"))
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """ImageLength and ImageWidth of the first directory (the page OpenCV decodes); the largest if repeated."""
    order: Literal["little", "big"] = "little" if data[:2] == b"II" else "big"
    ifd = int.from_bytes(data[4:8], order)
    count = int.from_bytes(data[ifd : ifd + 2], order)
    sides: dict[int, int] = {256: -1, 257: -1}
    for at in range(ifd + 2, min(ifd + 2 + 12 * count, len(data) - 11), 12):
        tag, kind = int.from_bytes(data[at : at + 2], order), int.from_bytes(data[at + 2 : at + 4], order)
        if tag in sides:
            if kind not in (1, 3, 4):  # BYTE, SHORT, LONG; libtiff takes more, but no camera writes them
                return None
            size = {1: 1, 3: 2, 4: 4}[kind]
            sides[tag] = max(sides[tag], int.from_bytes(data[at + 8 : at + 8 + size], order))
    return None if min(sides.values()) < 0 else (sides[257], sides[256])

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


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to an RGB uint8 array; raise ImageDecodeError with a reason."""
    if not data:
        raise ImageDecodeError(f"{name}: empty file")
    buf = np.frombuffer(data, dtype=np.uint8)
    _check_declared_size(buf, name)
    image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise ImageDecodeError(f"{name}: not a decodable image (truncated, corrupt or unknown format)")
    return to_rgb_uint8(image, name)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file to RGB uint8; raise ImageDecodeError naming the file on any failure."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ImageDecodeError(f"{path}: cannot read file ({err.strerror})") from err
    return decode_image(data, str(path))


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
    elif policy == "letterbox":
        side = max(h, w)
        canvas = np.zeros((side, side, image.shape[2]), image.dtype)
        top, left = (side - h) // 2, (side - w) // 2
        canvas[top : top + h, left : left + w] = image
        image = canvas
    shrink = image.shape[0] > size or image.shape[1] > size
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    out = cv2.resize(image, (size, size), interpolation=interp)
    return out if out.ndim == 3 else out[:, :, None]


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
        side = max(h, w)
        canvas = np.zeros((side, side, 1), np.uint8)
        top, left = (side - h) // 2, (side - w) // 2
        canvas[top : top + h, left : left + w] = m
        m = canvas
    out = cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST)
    return out > 127


def normalise(batch: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Map prepared uint8 images to float32 model input: (x - offset) / scale."""
    return (batch.astype(np.float32) - np.float32(spec.offset)) / np.float32(spec.scale)


def load_prepared(path: str | Path, spec: PreprocessSpec) -> np.ndarray:
    """Read a file and prepare it for the model (uint8 HxWxC)."""
    return prepare(read_image(path), spec)


def _check_declared_size(buf: np.ndarray, name: str) -> None:
    """Reject images whose header declares a side larger than MAX_SIDE before decoding them."""
    h, w = _declared_size(buf.tobytes()[:65536])
    if max(h, w) > MAX_SIDE:
        raise ImageDecodeError(f"{name}: declared size {w}x{h} exceeds the {MAX_SIDE} px limit")


def _declared_size(head: bytes) -> tuple[int, int]:
    """Height and width from a PNG or JPEG header, (0, 0) when unknown."""
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")
    if head[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(head):
            if head[i] != 0xFF:
                i += 1
                continue
            marker = head[i + 1]
            seg_len = int.from_bytes(head[i + 2 : i + 4], "big")
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                return int.from_bytes(head[i + 5 : i + 7], "big"), int.from_bytes(head[i + 7 : i + 9], "big")
            i += 2 + seg_len
    return 0, 0

"""Seeded synthetic defects made from normal images, for choosing settings without real defective images.

Five kinds, each drawn small or large relative to the image side (so the same code fits any part and any
resolution): ``patch`` (CutPaste: a rectangle cut from elsewhere in the image, colour-jittered, pasted),
``scar`` (CutPaste-scar: a thin rotated strip), ``texture`` (DRAEM-style: a Perlin-shaped blob filled with a
foreign texture made from another image), ``smear`` (a blurred, shifted smudge) and ``scratch`` (a thin
polyline, darker or brighter than the surface). Each returns the changed image and its boolean mask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

Rng = np.random.Generator
KINDS: tuple[str, ...] = ("patch", "scar", "texture", "smear", "scratch")


def smooth_noise(shape: tuple[int, int], cells: int, rng: Rng) -> np.ndarray:
    """Perlin-like smooth noise in [0, 1]: a ``cells`` x ``cells`` random grid upsampled with bicubic steps."""
    grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
    noise = cv2.resize(grid, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    noise -= noise.min()
    return noise / max(float(noise.max()), 1e-6)


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """Where the part is: pixels whose colour or fine detail departs from the border's (Otsu split), one filled blob.

    Falls back to the whole image when the split finds no clear part (a texture filling the frame).
    """
    side = image.shape[0]
    pixels = image.reshape(side, side, -1).astype(np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    distance = np.linalg.norm(pixels - np.median(border, axis=0), axis=2)
    gray = pixels.mean(axis=2)
    detail = np.abs(gray - cv2.GaussianBlur(gray, (0, 0), side / 100.0))
    border_detail = np.median(np.concatenate([detail[0], detail[-1], detail[:, 0], detail[:, -1]]))
    distance = cv2.GaussianBlur(distance + 4.0 * np.maximum(detail - border_detail, 0), (0, 0), side / 50.0)
    distance = np.log1p(distance)
    scaled = np.clip(distance / max(float(distance.max()), 1e-6) * 255, 0, 255).astype(np.uint8)
    _, split = cv2.threshold(scaled, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(split.astype(np.uint8))
    if count < 2:
        return np.ones((side, side), bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    blob = (labels == largest).astype(np.uint8)
    contours, _ = cv2.findContours(blob, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(blob)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    share = float(filled.mean())
    return filled.astype(bool) if 0.05 <= share <= 0.95 else np.ones((side, side), bool)


def _centre(where: np.ndarray, rng: Rng) -> tuple[int, int]:
    """A random (y, x) inside the boolean mask ``where``."""
    ys, xs = np.nonzero(where)
    pick = int(rng.integers(len(ys)))
    return int(ys[pick]), int(xs[pick])


def _box(side: int, area_fraction: float, aspect: float, rng: Rng, where: np.ndarray) -> tuple[int, int, int, int]:
    """A random (y, x, h, w) box of about ``area_fraction`` of a side x side image, centred inside ``where``."""
    area = area_fraction * side * side
    h = int(np.clip(np.sqrt(area / aspect), 2, side - 2))
    w = int(np.clip(area / max(h, 1), 2, side - 2))
    cy, cx = _centre(where, rng)
    return int(np.clip(cy - h // 2, 0, side - h)), int(np.clip(cx - w // 2, 0, side - w)), h, w


def _jitter(pixels: np.ndarray, rng: Rng) -> np.ndarray:
    """Colour jitter of a patch: brightness, contrast and a per-channel shift."""
    out = pixels.astype(np.float32)
    mean = out.mean()
    out = (out - mean) * rng.uniform(0.6, 1.4) + mean + rng.uniform(-40, 40)
    out += rng.uniform(-20, 20, size=(1, 1, out.shape[2]))
    return np.clip(out, 0, 255).astype(np.uint8)


def cut_paste_patch(image: np.ndarray, large: bool, rng: Rng, where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CutPaste: a jittered rectangle of the image pasted elsewhere."""
    side = image.shape[0]
    area = rng.uniform(0.02, 0.06) if large else rng.uniform(0.003, 0.012)
    y, x, h, w = _box(side, area, rng.uniform(0.4, 2.5), rng, where)
    sy, sx = int(rng.integers(0, side - h)), int(rng.integers(0, side - w))
    out = image.copy()
    out[y : y + h, x : x + w] = _jitter(image[sy : sy + h, sx : sx + w], rng)
    mask = np.zeros(image.shape[:2], bool)
    mask[y : y + h, x : x + w] = True
    return out, mask


def cut_paste_scar(image: np.ndarray, large: bool, rng: Rng, where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CutPaste-scar: a thin strip of the image, rotated and pasted elsewhere."""
    side = image.shape[0]
    length = int(side * (rng.uniform(0.15, 0.3) if large else rng.uniform(0.06, 0.12)))
    width = max(2, int(side * rng.uniform(0.01, 0.03)))
    sy, sx = int(rng.integers(0, side - width)), int(rng.integers(0, side - length))
    strip = _jitter(image[sy : sy + width, sx : sx + length], rng)
    canvas = np.zeros_like(image)
    stamp = np.zeros(image.shape[:2], np.uint8)
    cy, cx = (int(np.clip(c, length // 2 + 1, side - length // 2 - 1)) for c in _centre(where, rng))
    y0, x0 = cy - width // 2, cx - length // 2
    canvas[y0 : y0 + width, x0 : x0 + length] = strip
    stamp[y0 : y0 + width, x0 : x0 + length] = 1
    turn = cv2.getRotationMatrix2D((float(cx), float(cy)), float(rng.uniform(0, 180)), 1.0)
    canvas = cv2.warpAffine(canvas, turn, (side, side), flags=cv2.INTER_NEAREST)
    mask = cv2.warpAffine(stamp, turn, (side, side), flags=cv2.INTER_NEAREST).astype(bool)
    out = image.copy()
    out[mask] = canvas[mask]
    return out, mask


def _blob(side: int, large: bool, rng: Rng, where: np.ndarray) -> np.ndarray:
    """A Perlin-shaped blob mask inside a window centred in ``where`` (its size set by ``large``)."""
    win = int(side * (rng.uniform(0.2, 0.35) if large else rng.uniform(0.08, 0.15)))
    win = max(win, 6)
    noise = smooth_noise((win, win), int(rng.integers(2, 5)), rng)
    fade = cv2.getGaussianKernel(win, win / 4.0)
    noise *= (fade @ fade.T) / float((fade @ fade.T).max())
    local = noise > 0.35
    if not local.any():
        local[win // 2, win // 2] = True
    mask = np.zeros((side, side), bool)
    y, x = (int(np.clip(c - win // 2, 0, side - win)) for c in _centre(where, rng))
    mask[y : y + win, x : x + win] = local
    return mask


def foreign_texture(image: np.ndarray, rng: Rng) -> np.ndarray:
    """A texture that does not belong: the image turned, channel-shuffled, inverted or banded, then noised."""
    side = image.shape[0]
    texture = np.rot90(image, int(rng.integers(1, 4))).copy()
    texture = cv2.resize(texture, (side * 3, side * 3))[:side, :side] if rng.random() < 0.5 else texture
    if texture.ndim == 3 and rng.random() < 0.5:
        texture = texture[:, :, rng.permutation(texture.shape[2])]
    if rng.random() < 0.4:
        texture = 255 - texture
    bands = np.sin(np.arange(side) * rng.uniform(0.2, 1.0))[None, :, None] * rng.uniform(10, 50)
    noise = smooth_noise((side, side), int(rng.integers(8, 32)), rng)[:, :, None] * rng.uniform(20, 80)
    return np.clip(texture.astype(np.float32) + bands + noise, 0, 255).astype(np.uint8)


def perlin_texture(image: np.ndarray, large: bool, rng: Rng, where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DRAEM-style: a Perlin-shaped blob filled with a foreign texture, blended in."""
    mask = _blob(image.shape[0], large, rng, where)
    beta = rng.uniform(0.5, 1.0)
    blended = beta * foreign_texture(image, rng).astype(np.float32) + (1 - beta) * image.astype(np.float32)
    out = image.copy()
    out[mask] = blended.astype(np.uint8)[mask]
    return out, mask


def smear(image: np.ndarray, large: bool, rng: Rng, where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A smudge: the image blurred, shifted and darkened or brightened inside a blob."""
    side = image.shape[0]
    mask = _blob(side, large, rng, where)
    k = int(side * 0.03) * 2 + 1
    shift = np.float32([[1, 0, rng.uniform(-0.05, 0.05) * side], [0, 1, rng.uniform(-0.05, 0.05) * side]])
    moved = cv2.warpAffine(cv2.GaussianBlur(image, (k, k), 0), shift, (side, side), borderMode=cv2.BORDER_REFLECT)
    tone = moved.astype(np.float32) * (rng.uniform(0.4, 0.7) if rng.random() < 0.5 else rng.uniform(1.3, 1.8))
    out = image.copy()
    out[mask] = np.clip(tone, 0, 255).astype(np.uint8)[mask]
    return out, mask


def scratch(image: np.ndarray, large: bool, rng: Rng, where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A thin polyline, darker or brighter than the surface under it."""
    side = image.shape[0]
    length = side * (rng.uniform(0.2, 0.45) if large else rng.uniform(0.08, 0.18))
    thickness = max(1, round(side * rng.uniform(0.004, 0.012)))
    points = [np.array(_centre(where, rng)[::-1], np.float64)]
    angle = rng.uniform(0, 2 * np.pi)
    for _ in range(int(rng.integers(2, 5))):
        angle += rng.uniform(-0.6, 0.6)
        step = length / 3 * np.array([np.cos(angle), np.sin(angle)])
        points.append(np.clip(points[-1] + step, 0, side - 1))
    stamp = np.zeros((side, side), np.uint8)
    cv2.polylines(stamp, [np.round(points).astype(np.int32)], False, 1, thickness)
    mask = stamp.astype(bool)
    level = rng.uniform(0, 60) if image[mask].mean() > 110 else rng.uniform(190, 255)
    out = image.copy()
    out[mask] = np.clip(level + rng.normal(0, 10, size=out[mask].shape), 0, 255).astype(np.uint8)
    return out, mask


MAKERS: dict[str, Callable[[np.ndarray, bool, Rng, np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "patch": cut_paste_patch,
    "scar": cut_paste_scar,
    "texture": perlin_texture,
    "smear": smear,
    "scratch": scratch,
}


def _on_part(
    maker: Callable[[np.ndarray, bool, Rng, np.ndarray], tuple[np.ndarray, np.ndarray]],
    image: np.ndarray,
    large: bool,
    rng: Rng,
    where: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One defect clipped to the part ``where``; drawn again (up to 5 times) when little of it lands there."""
    for _ in range(5):
        changed, mask = maker(image, large, rng, where)
        kept = mask & where
        if kept.sum() >= max(4, 0.5 * mask.sum()):
            break
    out = image.copy()
    out[kept] = changed[kept]
    return out, kept


def make_defects(
    images: Sequence[np.ndarray], per_image: int = 2, seed: int = 0, kinds: Sequence[str] = KINDS
) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """``per_image`` synthetic defects of each square uint8 image: (images, boolean masks, "kind/size" labels).

    Kinds and sizes cycle so that every kind appears small and large; each defect is centred on the part
    (:func:`foreground_mask`); the draw is seeded.
    """
    rng = np.random.default_rng(seed)
    out_images, out_masks, labels = [], [], []
    step = 0
    for image in images:
        if image.shape[0] != image.shape[1]:
            msg = f"synthetic defects need square images, got {image.shape}"
            raise ValueError(msg)
        where = foreground_mask(image)
        for _ in range(per_image):
            kind = kinds[step % len(kinds)]
            large = (step // len(kinds)) % 2 == 1
            step += 1
            changed, mask = _on_part(MAKERS[kind], image, large, rng, where)
            out_images.append(changed)
            out_masks.append(mask)
            labels.append(f"{kind}/{'large' if large else 'small'}")
    return out_images, out_masks, labels


def synthetic_recall(
    score: Callable[[np.ndarray], np.ndarray], images: np.ndarray, threshold: float, seed: int
) -> float | None:
    """Share of 3 synthetic defects per image (seeded) that ``score`` puts at or above ``threshold``.

    ``score`` maps a batch of prepared uint8 images to image scores; None for gray or empty ``images``.
    """
    if len(images) == 0 or images.shape[-1] != 3:
        return None
    defects, _, _ = make_defects(list(images), 3, seed)
    return float((np.asarray(score(np.stack(defects))) >= threshold).mean())

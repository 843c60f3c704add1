"""Training augmentation on prepared uint8 images (numpy/OpenCV), configured per data set."""

from __future__ import annotations

import cv2
import numpy as np

from training.config import AugmentConfig


def augment_image(image: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Random flips, rotation, zoom, brightness and contrast within the limits of ``cfg``."""
    out = image
    if cfg.hflip and rng.random() < 0.5:
        out = out[:, ::-1]
    if cfg.vflip and rng.random() < 0.5:
        out = out[::-1]
    angle = rng.uniform(-cfg.rotate_deg, cfg.rotate_deg) if cfg.rotate_deg else 0.0
    zoom = rng.uniform(1 - cfg.zoom, 1 + cfg.zoom) if cfg.zoom else 1.0
    if angle or zoom != 1.0:
        h, w = out.shape[:2]
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, zoom)
        out = cv2.warpAffine(np.ascontiguousarray(out), matrix, (w, h), borderMode=cv2.BORDER_REFLECT_101)
        if out.ndim == 2:
            out = out[:, :, None]
    if cfg.brightness or cfg.contrast:
        pixels = out.astype(np.float32)
        gain = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast) if cfg.contrast else 1.0
        shift = rng.uniform(-cfg.brightness, cfg.brightness) * 255 if cfg.brightness else 0.0
        mean = pixels.mean()
        out = np.clip((pixels - mean) * gain + mean + shift, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out)


def augment_batch(batch: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Augment each image of a (N,H,W,C) uint8 batch independently."""
    return np.stack([augment_image(img, cfg, rng) for img in batch])


def is_identity(cfg: AugmentConfig) -> bool:
    """True when the config turns every augmentation off."""
    return not (cfg.hflip or cfg.vflip or cfg.rotate_deg or cfg.zoom or cfg.brightness or cfg.contrast)

"""Hostile and odd image inputs built from real bottle images: encodings, crafted headers, seeded mutations.

Every generated case says what must happen to it: ``decode`` (valid: decoded, and ``expect`` holds the RGB
pixels when the encoding is lossless), ``reject`` (refused with a reason that contains ``reason``) or ``either``
(mutated bytes: decoded to a sane image or refused with a reason, never anything else).
"""

from __future__ import annotations

import random
import struct
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.errors import ImageDecodeError
from edge_agent.preprocess import MAX_SIDE, decode_image

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".PNG", ".JPG")
HUGE = 20000


@dataclass(frozen=True)
class Case:
    """One input: ``name`` (what it is), ``data``, the expected outcome, and a file extension to store it under."""

    name: str
    data: bytes
    outcome: str  # "decode" | "reject" | "either"
    ext: str = ".png"
    expect: np.ndarray | None = None  # exact RGB result for lossless valid inputs
    reason: str = ""  # a substring of the rejection reason


def real_bottles(datasets_root: Path, per_type: int = 2) -> list[np.ndarray]:
    """BGR images read from the real MVTec AD bottle test set (each defect type and good)."""
    test = datasets_root / "mvtec_ad" / "bottle" / "test"
    paths = [p for d in sorted(test.iterdir()) if d.is_dir() for p in sorted(d.glob("*.png"))[:per_type]]
    images = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths]
    assert paths and all(i is not None for i in images), f"cannot read bottle test images under {test}"
    return images


# --- hand-written encoders for what OpenCV cannot write ----------------------------------------------------------


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_bytes(rows: np.ndarray, color_type: int, depth: int = 8, palette: np.ndarray | None = None) -> bytes:
    """PNG of ``rows`` (H x W x samples, big-endian samples for 16 bit) with filter 0 on every line."""
    h, w = rows.shape[:2]
    raw = rows.astype(">u2" if depth == 16 else np.uint8).reshape(h, -1).view(np.uint8)
    body = b"".join(b"\0" + raw[y].tobytes() for y in range(h))
    head = png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0))
    plte = png_chunk(b"PLTE", palette.astype(np.uint8).tobytes()) if palette is not None else b""
    return b"\x89PNG\r\n\x1a\n" + head + plte + png_chunk(b"IDAT", zlib.compress(body)) + png_chunk(b"IEND", b"")


def tiff_bytes(pixels: np.ndarray) -> bytes:
    """Uncompressed little-endian TIFF, one strip, any number of 8-bit samples (OpenCV writes only 1, 3, 4)."""
    h, w = pixels.shape[:2]
    spp = 1 if pixels.ndim == 2 else pixels.shape[2]
    data = np.ascontiguousarray(pixels, np.uint8).tobytes()
    entries = [
        (256, 4, 1, w),
        (257, 4, 1, h),
        (258, 3, 1, 8),  # BitsPerSample (the same for every sample)
        (259, 3, 1, 1),
        (262, 3, 1, 2 if spp >= 3 else 1),  # RGB or BlackIsZero
        (273, 4, 1, 8),  # StripOffsets: the pixels follow the header
        (277, 3, 1, spp),
        (278, 4, 1, h),
        (279, 4, 1, len(data)),
        (284, 3, 1, 1),
    ]
    if spp in (2, 4):
        entries.append((338, 3, 1, 2))  # ExtraSamples: unassociated alpha
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += b"\0\0\0\0"
    return b"II*\0" + struct.pack("<I", 8 + len(data)) + data + ifd


def encode(image: np.ndarray, ext: str, *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, image, list(params))
    assert ok, f"cv2 cannot encode {ext}"
    return buf.tobytes()


def rgb(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def valid_variants(bottle: np.ndarray, side: int) -> list[Case]:
    """The same real bottle in every supported encoding, bit depth, colour type and channel count."""
    small = cv2.resize(bottle, (side, side), interpolation=cv2.INTER_AREA)
    gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    gray3 = np.repeat(gray[:, :, None], 3, axis=2)
    alpha = np.full(gray.shape, 200, np.uint8)
    deep = small.astype(np.uint16) * 256 + 77  # 16-bit with low bits set: only the high byte may survive
    quant = (small // 64) * 64 + 32  # 64 colours: a palette image
    colours, index = np.unique(rgb(quant).reshape(-1, 3), axis=0, return_inverse=True)
    pal = png_bytes(index.reshape(side, side, 1), color_type=3, palette=colours)
    return [
        Case("png-rgb", encode(small, ".png"), "decode", ".png", rgb(small)),
        Case("png-rgba", encode(np.dstack([small, alpha]), ".png"), "decode", ".png", rgb(small)),
        Case("png-gray", encode(gray, ".png"), "decode", ".png", gray3),
        Case("png-gray-alpha-2ch", png_bytes(np.dstack([gray, alpha]), color_type=4), "decode", ".png", gray3),
        Case("png-16bit-rgb", encode(deep, ".png"), "decode", ".png", rgb(small)),
        Case("png-16bit-gray", encode(gray.astype(np.uint16) * 257, ".png"), "decode", ".png", gray3),
        Case("png-palette", pal, "decode", ".png", rgb(quant)),
        Case("png-1x1", encode(small[:1, :1], ".png"), "decode", ".png", rgb(small[:1, :1])),
        Case("jpeg", encode(small, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 90), "decode", ".jpg"),
        Case("jpeg-gray", encode(gray, ".jpg"), "decode", ".jpeg"),
        Case("jpeg-progressive", encode(small, ".jpg", cv2.IMWRITE_JPEG_PROGRESSIVE, 1), "decode", ".jpg"),
        Case("jpeg-1x1", encode(small[:1, :1], ".jpg"), "decode", ".jpg"),
        Case("bmp", encode(small, ".bmp"), "decode", ".bmp", rgb(small)),
        Case("bmp-gray", encode(gray, ".bmp"), "decode", ".bmp", gray3),
        Case("tiff", encode(small, ".tiff"), "decode", ".tiff", rgb(small)),
        Case("tiff-1ch", tiff_bytes(gray), "decode", ".tif", gray3),
        Case("tiff-2ch", tiff_bytes(np.dstack([gray, alpha])), "decode", ".tif", gray3),  # alpha dropped
        Case("tiff-4ch", encode(np.dstack([small, alpha]), ".tiff"), "decode", ".tiff", rgb(small)),
        Case("tiff-float32", encode(small.astype(np.float32), ".tiff"), "reject", ".tiff", reason="pixel type"),
        Case("webp-lossy", encode(small, ".webp", cv2.IMWRITE_WEBP_QUALITY, 80), "decode", ".webp"),
        Case("webp-lossless", encode(small, ".webp", cv2.IMWRITE_WEBP_QUALITY, 101), "decode", ".webp", rgb(small)),
    ]


def unsupported_variants(bottle: np.ndarray, side: int = 32) -> list[Case]:
    """Formats OpenCV could decode but the product does not take (PNG, JPEG, BMP, TIFF and WebP only)."""
    small = cv2.resize(bottle, (side, side), interpolation=cv2.INTER_AREA)
    out = []
    for ext in (".gif", ".jp2", ".ppm", ".hdr", ".ras", ".pam", ".avif"):
        out.append(Case(f"unsupported{ext}", encode(small, ext), "reject", ".png", reason="not a decodable image"))
    return out


# --- crafted headers: tiny files that declare any size -----------------------------------------------------------


def _jpeg_sof(data: bytes) -> int:
    i = 2
    while data[i + 1] not in (0xC0, 0xC2):
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return i


def declared(case: Case, w: int, h: int) -> list[Case]:
    """Copies of a valid case whose header declares ``w`` x ``h`` (several ways of hiding it for JPEG)."""
    d, out = bytearray(case.data), []
    if case.name == "png-rgb":
        d[16:24] = struct.pack(">II", w, h)
        out.append(bytes(d))
        d[29:33] = struct.pack(">I", zlib.crc32(bytes(d[12:29])) & 0xFFFFFFFF)  # with a correct IHDR CRC
        out.append(bytes(d))
    elif case.name in ("jpeg", "jpeg-progressive"):
        sof = _jpeg_sof(case.data)
        d[sof + 5 : sof + 9] = struct.pack(">HH", h, w)
        plain = bytes(d)
        app = b"\xff\xe1" + struct.pack(">H", 65535) + bytes(65533)
        out += [plain, plain[:sof] + b"\xff\xff\xff" + plain[sof:], plain[:2] + app + app + plain[2:]]
        out.append(plain[:sof] + b"junk" + plain[sof:])  # stray bytes before a marker: libjpeg skips them
    elif case.name == "bmp":
        d[18:26] = struct.pack("<ii", w, -h)  # top-down: negative height
        out.append(bytes(d))
    elif case.name == "tiff-1ch":
        ifd = int.from_bytes(d[4:8], "little")
        d[ifd + 2 + 8 : ifd + 2 + 12] = struct.pack("<I", w)
        d[ifd + 14 + 8 : ifd + 14 + 12] = struct.pack("<I", h)
        out.append(bytes(d))
    elif case.name == "webp-lossless":  # VP8L: 14-bit width-1 and height-1
        bits = int.from_bytes(d[21:25], "little") & ~((1 << 28) - 1)
        d[21:25] = (bits | (min(w, 16384) - 1) | ((min(h, 16384) - 1) << 14)).to_bytes(4, "little")
        out.append(bytes(d))
        vp8x = b"VP8X" + struct.pack("<I", 10) + bytes(4) + (w - 1).to_bytes(3, "little")
        vp8x += (h - 1).to_bytes(3, "little")
        body = b"WEBP" + vp8x + case.data[12:]
        out.append(b"RIFF" + struct.pack("<I", len(body)) + body)  # extended format: canvas size in VP8X
    big = max(w, h) > MAX_SIDE
    outcome, reason = ("reject", "exceeds") if big else ("either", "")
    return [Case(f"{case.name}-declares-{w}x{h}#{k}", b, outcome, case.ext, reason=reason) for k, b in enumerate(out)]


def huge_and_tiny(valid: list[Case]) -> list[Case]:
    out = []
    for case in valid:
        for w, h in ((HUGE, HUGE), (1, HUGE), (HUGE, 1), (MAX_SIDE + 1, 64), (1, 1)):
            out += declared(case, w, h)
    return out


# --- seeded mutations --------------------------------------------------------------------------------------------


def mutate(rng: random.Random, seeds: list[Case]) -> Case:
    """One mutated input: truncation, byte flips (often in the header), insertions, deletions, splices."""
    seed = rng.choice(seeds)
    data = bytearray(seed.data)
    kind = rng.choice(("truncate", "flip", "flip-header", "insert", "delete", "splice", "zero-tail"))
    if kind == "truncate":
        data = data[: rng.randrange(0, len(data))]
    elif kind in ("flip", "flip-header"):
        span = min(len(data), 64) if kind == "flip-header" else len(data)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(span)] = rng.randrange(256)
    elif kind == "insert":
        at = rng.randrange(len(data) + 1)
        data[at:at] = rng.randbytes(rng.randint(1, 64))
    elif kind == "delete":
        at = rng.randrange(len(data))
        del data[at : at + rng.randint(1, 64)]
    elif kind == "splice":
        other = rng.choice(seeds).data
        cut = rng.randrange(1, len(data))
        data = data[:cut] + other[rng.randrange(len(other)) :]
    else:
        cut = rng.randrange(len(data))
        data[cut:] = bytes(len(data) - cut)
    return Case(f"{seed.name}~{kind}", bytes(data), "either", rng.choice(IMAGE_EXTS))


def junk(rng: random.Random) -> Case:
    """Bytes that are no image at all, or only start like one, under an image extension."""
    kind = rng.choice(("empty", "zeros", "random", "png-magic", "jpeg-magic", "text"))
    n = rng.randint(1, 4096)
    data = {
        "empty": b"",
        "zeros": bytes(n),
        "random": rng.randbytes(n),
        "png-magic": b"\x89PNG\r\n\x1a\n" + rng.randbytes(n),
        "jpeg-magic": b"\xff\xd8\xff" + rng.randbytes(n),
        "text": b"not an image " * (n // 13 + 1),
    }[kind]
    outcome = "reject" if kind in ("empty", "zeros", "text") else "either"
    return Case(f"junk-{kind}", data, outcome, rng.choice(IMAGE_EXTS))


def corpus(datasets_root: Path, n: int, seed: int = 20240607) -> Iterator[Case]:
    """``n`` inputs: every valid variant, unsupported formats, crafted sizes, then seeded mutations and junk."""
    rng = random.Random(seed)
    bottles = real_bottles(datasets_root)
    valid = [c for i, b in enumerate(bottles) for c in valid_variants(b, side=(48, 64, 96)[i % 3])]
    full = [Case("png-full", encode(b, ".png"), "decode", ".png", rgb(b)) for b in bottles[:2]]
    full += [Case("jpeg-full", encode(b, ".jpg"), "decode", ".jpg") for b in bottles[2:4]]
    crafted = [c for c in huge_and_tiny(valid_variants(bottles[1], 64)) if f"{HUGE}x{HUGE}" not in c.name]  # in a child
    fixed = [*valid, *full, *unsupported_variants(bottles[0]), *crafted]
    fixed.append(Case("zero-bytes", b"", "reject", ".png", reason="empty file"))
    seeds = valid + full
    yield from fixed[:n]
    for _ in range(n - len(fixed)):
        yield junk(rng) if rng.random() < 0.1 else mutate(rng, seeds)


# --- running one input under a deadline --------------------------------------------------------------------------

_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fuzz-decode")


def decode_within(case: Case, timeout: float) -> tuple[np.ndarray | None, BaseException | None, float]:
    """``decode_image`` on a worker thread: (image, error, seconds); a hang fails the test after ``timeout``."""

    def work() -> tuple[np.ndarray | None, BaseException | None, float]:
        started = time.perf_counter()
        try:
            return decode_image(case.data, f"fuzz/{case.name}{case.ext}"), None, time.perf_counter() - started
        except BaseException as err:  # reported and judged by the caller
            return None, err, time.perf_counter() - started

    try:
        return _POOL.submit(work).result(timeout=timeout)
    except FutureTimeout:
        pytest.fail(f"decode_image hung on {case.name} ({len(case.data)} bytes) for more than {timeout} s")


def judge(case: Case, image: np.ndarray | None, error: BaseException | None) -> str | None:
    """None when the outcome is what ``case`` allows, else what went wrong."""
    if error is not None and not isinstance(error, ImageDecodeError):
        return f"{case.name}: {type(error).__name__} escaped: {error}"
    if error is not None:
        if f"fuzz/{case.name}{case.ext}" not in str(error):
            return f"{case.name}: reason does not name the input: {error}"
        if case.outcome == "decode":
            return f"{case.name}: valid input refused: {error}"
        if case.reason and case.reason not in str(error):
            return f"{case.name}: reason {str(error)!r} lacks {case.reason!r}"
        return None
    assert image is not None
    if case.outcome == "reject":
        return f"{case.name}: decoded to {image.shape} but must be refused ({case.reason})"
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        return f"{case.name}: decoded to {image.dtype} {image.shape}, not RGB uint8"
    if max(image.shape[:2]) > MAX_SIDE:
        return f"{case.name}: decoded to {image.shape}, beyond the {MAX_SIDE} px limit"
    if case.expect is not None and not np.array_equal(image, case.expect):
        return f"{case.name}: pixels differ from the lossless original"
    return None

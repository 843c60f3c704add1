"""Fuzzing the decode and pre-processing path with inputs made from real bottle images.

Every input is either decoded to a sane RGB image (exactly, where the encoding is lossless) or refused with an
``ImageDecodeError`` naming it; nothing else escapes, nothing hangs (a per-input deadline), nothing allocates
gigabytes. Decompression bombs run in a child process under a memory limit and must be refused before
OpenCV's decoder is even called.
"""

from __future__ import annotations

import json
import resource
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_agent.errors import ImageDecodeError
from edge_agent.preprocess import MAX_SIDE, PreprocessSpec, decode_image, jpeg_reduction, prepare
from tests.fuzz.images import (
    HUGE,
    Case,
    corpus,
    decode_within,
    encode,
    huge_and_tiny,
    judge,
    real_bottles,
    valid_variants,
)

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"
N_INPUTS = 2000
PER_INPUT_TIMEOUT = 30.0  # a hang fails the test instead of blocking the suite
SLOWEST_ALLOWED = 2.0  # seconds for one small input, on a loaded 2-core machine
SPEC = PreprocessSpec(size=64)


@pytest.fixture(scope="module")
def bottles(datasets_root):
    return real_bottles(datasets_root)


def test_valid_variants_of_real_bottles_decode_exactly(bottles):
    checked = Counter()
    for bottle, side in zip(bottles, [1, 7, 64] * len(bottles), strict=False):
        for case in valid_variants(bottle, side):
            image, error, _ = decode_within(case, PER_INPUT_TIMEOUT)
            assert judge(case, image, error) is None
            if case.outcome == "decode":
                want = (1, 1, 3) if case.name.endswith("1x1") else (side, side, 3)
                assert image.shape == want, case.name
                assert prepare(image, SPEC).shape == (64, 64, 3)
            checked[case.outcome] += 1
    assert checked["decode"] >= 100 and checked["reject"] >= 5  # tiff-float32 is the one refused variant


@pytest.mark.parametrize(
    "case",
    [c for c in huge_and_tiny(valid_variants(np.full((64, 64, 3), 90, np.uint8), 64)) if "20000x20000" not in c.name],
    ids=lambda c: c.name,
)
def test_crafted_header_sizes(case: Case):
    """Sides beyond MAX_SIDE are refused from the header, however the JPEG hides its frame header."""
    image, error, seconds = decode_within(case, PER_INPUT_TIMEOUT)
    assert judge(case, image, error) is None
    assert seconds < SLOWEST_ALLOWED


BOMB_PROBE = r"""
import json, resource, sys, time
from pathlib import Path
resource.setrlimit(resource.RLIMIT_DATA, (1 << 30, 1 << 30))  # a regression fails here instead of eating RAM
import cv2
import edge_agent.preprocess as pre
calls = []
real = cv2.imdecode
pre.cv2.imdecode = lambda *a: (calls.append(1), real(*a))[1]
for path in sorted(Path(sys.argv[1]).iterdir()):
    calls.clear()
    started = time.perf_counter()
    try:
        image = pre.decode_image(path.read_bytes(), path.name)
        result = {"decoded": list(image.shape)}
    except Exception as err:
        result = {"error": f"{type(err).__name__}: {err}"}
    result.update(name=path.name, decoder_called=bool(calls), seconds=time.perf_counter() - started)
    print(json.dumps(result), flush=True)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec (a big pytest parent)
hwm_kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"maxrss_mb": hwm_kb // 1024}))
"""


def _bombs(bottle: np.ndarray, folder: Path) -> dict[str, str]:
    """Small files that decode to gigabytes (or make OpenCV allocate them); name -> expected reason."""
    jpeg = encode(bottle[:64, :64], ".jpg")
    sof = jpeg.index(b"\xff\xc0")
    huge = jpeg[: sof + 5] + struct.pack(">HH", HUGE, HUGE) + jpeg[sof + 9 :]
    app = b"\xff\xe1" + struct.pack(">H", 65535) + bytes(65533)
    png = encode(bottle[:48, :48], ".png")
    idat = png.index(b"IDAT") - 4
    iend = png.index(b"IEND") - 4
    bombs = {
        "jpeg-sof-after-fill-bytes.jpg": (huge[:sof] + b"\xff\xff\xff" + huge[sof:], "exceeds"),
        "jpeg-sof-after-128k-of-app-segments.jpg": (huge[:2] + app + app + huge[2:], "exceeds"),
        "tiff-20000x20000-shared-strips.tif": (_tiff_strip_bomb(HUGE), "exceeds"),
        "png-idat-length-3gb.png": (png[:idat] + struct.pack(">I", 0xBAF30A78) + png[idat + 4 :], "truncated"),
        "png-iend-length-2.8gb.png": (png[:iend] + struct.pack(">I", 0xA9000000) + png[iend + 4 :], "truncated"),
        "bomb-16000x16000.webp": ((DATA / "bomb-16000x16000.webp").read_bytes(), "exceeds"),
        "bomb-20000x20000.jp2": ((DATA / "bomb-20000x20000.jp2").read_bytes(), "not a decodable image"),
    }
    for name, (data, _) in bombs.items():
        (folder / name).write_bytes(data)
    return {name: reason for name, (_, reason) in bombs.items()}


def _tiff_strip_bomb(side: int) -> bytes:
    """``side`` x ``side`` gray TIFF: one PackBits row of zeros, referenced by every strip (~8 bytes per row)."""
    row = b"\x81\x00" * (side // 128) + (bytes([257 - side % 128, 0]) if side % 128 else b"")
    strips = 8 + len(row)  # offset of the StripOffsets array
    counts = strips + 4 * side
    entries = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 8), (259, 3, 1, 32773), (262, 3, 1, 1)]
    entries += [(273, 4, side, strips), (277, 3, 1, 1), (278, 4, 1, 1), (279, 4, side, counts)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    arrays = struct.pack(f"<{side}I", *[8] * side) + struct.pack(f"<{side}I", *[len(row)] * side)
    return b"II*\0" + struct.pack("<I", counts + 4 * side) + row + arrays + ifd


def test_decompression_bombs_are_refused_before_decoding(bottles, tmp_path):
    expected = _bombs(bottles[0], tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", BOMB_PROBE, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    results = {r["name"]: r for r in lines if "name" in r}
    assert set(results) == set(expected)
    for name, reason in expected.items():
        r = results[name]
        assert "error" in r and r["error"].startswith("ImageDecodeError"), f"{name}: {r}"
        assert reason in r["error"], f"{name}: {r['error']}"
        assert not r["decoder_called"], f"{name} reached OpenCV's decoder"
        assert r["seconds"] < SLOWEST_ALLOWED
    assert lines[-1]["maxrss_mb"] < 400


def test_seeded_corpus_of_mutated_bottles_never_crashes_or_hangs(datasets_root, record_property):
    """~2000 inputs: every variant, crafted sizes, then seeded mutations; each decoded sanely or refused."""
    outcomes: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    problems: list[str] = []
    slowest = (0.0, "")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    for case in corpus(datasets_root, N_INPUTS):
        image, error, seconds = decode_within(case, PER_INPUT_TIMEOUT)
        slowest = max(slowest, (seconds, case.name))
        problem = judge(case, image, error)
        if problem is None and image is not None:
            prepared = prepare(image, SPEC)
            if prepared.shape != (64, 64, 3) or prepared.dtype != np.uint8:
                problem = f"{case.name}: prepared to {prepared.dtype} {prepared.shape}"
        if problem:
            problems.append(problem)
        outcomes["decoded" if image is not None else "quarantined"] += 1
        kinds[case.outcome] += 1
    rss_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) // 1024
    tried = sum(outcomes.values())
    record_property("fuzz_inputs", tried)
    for key, value in outcomes.items():
        record_property(f"fuzz_{key}", value)
    summary = (
        f"fuzzed {tried} inputs in {time.monotonic() - started:.1f} s: {dict(outcomes)}; "
        f"cases {dict(kinds)}; slowest {slowest[0] * 1000:.0f} ms ({slowest[1]}); peak RSS +{rss_growth_mb} MB"
    )
    print(summary)
    assert problems == [], "\n".join(problems[:20])
    assert tried == N_INPUTS
    assert outcomes["decoded"] > 100 and outcomes["quarantined"] > 100  # both paths really exercised
    assert slowest[0] < SLOWEST_ALLOWED, summary
    assert rss_growth_mb < 512, summary


def test_hypothesis_mutations_of_real_bottles(bottles, record_property):
    seeds = [c for i, b in enumerate(bottles[:3]) for c in valid_variants(b, side=(16, 33, 64)[i])]
    tried: Counter[str] = Counter()

    @settings(
        max_examples=400,
        deadline=2000,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        index=st.integers(0, len(seeds) - 1),
        keep=st.floats(0.0, 1.0),
        edits=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=12),
        tail=st.binary(max_size=64),
    )
    def check(index: int, keep: float, edits: list[tuple[float, int]], tail: bytes) -> None:
        seed = seeds[index]
        data = bytearray(seed.data[: int(len(seed.data) * keep) or None])
        for where, value in edits:
            if data:
                data[min(int(where * len(data)), len(data) - 1)] = value
        case = Case(f"{seed.name}~hyp", bytes(data) + tail, "either", seed.ext)
        image, error, _ = decode_within(case, PER_INPUT_TIMEOUT)
        assert judge(case, image, error) is None
        if image is not None:
            assert prepare(image, SPEC).shape == (64, 64, 3)
        tried["decoded" if image is not None else "quarantined"] += 1

    check()
    record_property("fuzz_inputs", sum(tried.values()))
    for key, value in tried.items():
        record_property(f"fuzz_{key}", value)
    print(f"hypothesis tried {sum(tried.values())} mutated inputs: {dict(tried)}")
    assert sum(tried.values()) >= 100


def test_hypothesis_prepare_contract(record_property):
    """prepare() returns the model's size x size x channels uint8, or refuses what is not RGB/gray uint8."""
    tried = Counter()

    @settings(max_examples=300, deadline=2000, derandomize=True, database=None)
    @given(
        image=hnp.arrays(
            dtype=st.sampled_from([np.uint8, np.uint8, np.uint16, np.float32]),
            shape=st.one_of(
                st.tuples(st.integers(1, 40), st.integers(1, 40)),
                st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(1, 5)),
            ),
        ),
        size=st.integers(1, 48),
        color=st.sampled_from(["rgb", "gray"]),
        policy=st.sampled_from(["stretch", "center_crop", "letterbox"]),
    )
    def check(image: np.ndarray, size: int, color: str, policy: str) -> None:
        spec = PreprocessSpec(size=size, color=color, resize=policy)
        channels = 1 if image.ndim == 2 else image.shape[2]
        valid = image.dtype == np.uint8 and channels in (1, 3) and image.size > 0
        try:
            out = prepare(image, spec)
        except ImageDecodeError as err:
            assert not valid, f"valid {image.dtype} {image.shape} refused: {err}"
            tried["refused"] += 1
            return
        assert valid, f"{image.dtype} {image.shape} accepted as {out.dtype} {out.shape}"
        assert out.shape == (size, size, spec.channels) and out.dtype == np.uint8
        tried["prepared"] += 1

    check()
    record_property("fuzz_inputs", sum(tried.values()))
    for key, value in tried.items():
        record_property(f"fuzz_{key}", value)
    print(f"prepare() tried {sum(tried.values())} arrays: {dict(tried)}")
    assert tried["prepared"] > 50 and tried["refused"] > 20


def test_largest_allowed_side_still_decodes():
    """The limit is not off by one: a MAX_SIDE-wide strip decodes."""
    strip = encode(np.full((2, MAX_SIDE, 3), 77, np.uint8), ".png")
    image, error, _ = decode_within(Case("strip", strip, "decode", ".png"), PER_INPUT_TIMEOUT)
    assert error is None and image.shape == (2, MAX_SIDE, 3)


def test_mutated_large_jpegs_decoded_reduced_never_crash(bottles):
    """Seeded truncations and byte edits of a camera-sized JPEG, decoded the agent's way (reduced to the model's
    side): each one decodes to RGB uint8 no smaller than that side, or is refused with an ImageDecodeError."""
    big = cv2.resize(bottles[0], (1024, 768))  # BGR, as OpenCV encodes it
    data = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    rng = np.random.default_rng(7)
    outcomes: Counter[str] = Counter()
    for i in range(300):
        mutated = bytearray(data[: int(len(data) * rng.uniform(0.05, 1.0))] if i % 3 == 0 else data)
        for _ in range(int(rng.integers(1, 12))):
            mutated[int(rng.integers(2, len(mutated)))] = int(rng.integers(0, 256))
        try:
            image = decode_image(bytes(mutated), f"big-{i}.jpg", 128)
        except ImageDecodeError:
            outcomes["refused"] += 1
            continue
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert min(image.shape[:2]) >= 128 or jpeg_reduction(bytes(mutated), 128) == 1
        outcomes["decoded"] += 1
    print(f"mutated large JPEGs: {dict(outcomes)}")
    assert outcomes["decoded"] > 50 and outcomes["refused"] > 50, outcomes  # both paths really exercised

"""The same hostile inputs as files in a watched folder: each is scored once, or quarantined with its reason."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

from edge_agent.config import FolderSourceConfig
from edge_agent.preprocess import MAX_SIDE
from edge_agent.sources.folder import FolderSource
from tests.fuzz.images import corpus

N_FILES = 240
DEADLINE = 60.0


def test_fuzzed_files_through_the_folder_source(datasets_root, tmp_path, record_property):
    root = tmp_path / "cam"
    root.mkdir()
    cases = random.Random(77).sample(list(corpus(datasets_root, 2000)), N_FILES)  # valid, crafted and mutated
    expected: dict[str, str] = {}
    for i, case in enumerate(cases):
        name = f"{i:04d}_{case.name.replace('/', '_')}{case.ext}"
        (root / name).write_bytes(case.data)
        expected[name] = case.outcome
    src = FolderSource("fuzz", FolderSourceConfig(path=root, stable_seconds=0.0, poll_seconds=0.2))
    stop = threading.Event()
    timer = threading.Timer(DEADLINE, stop.set)  # the source must not hang on any of them
    timer.start()
    seen: dict[str, str | None] = {}
    started = time.monotonic()
    try:
        for item in src.items(stop, timeout=0.05):
            fid = item.frame.frame_id
            assert fid not in seen, f"{fid} handed out twice"
            if item.image is not None:
                assert item.image.ndim == 3 and item.image.shape[2] == 3 and max(item.image.shape[:2]) <= MAX_SIDE
            else:
                assert item.error, f"{fid}: no reason"
            seen[fid] = item.error
            src.done(item, ok=item.image is not None)  # what the agent does
            if len(seen) == len(cases):
                break
    finally:
        timer.cancel()
        src.stop()
    elapsed = time.monotonic() - started
    assert set(seen) == set(expected), f"missing after {elapsed:.1f} s: {sorted(set(expected) - set(seen))[:5]}"

    quarantine, done = root / "quarantine", root / "done"
    counts = Counter("quarantined" if err else "decoded" for err in seen.values())
    for name, error in seen.items():
        assert not (root / name).exists(), f"{name} left in the watched folder"
        if error is None:
            assert expected[name] != "reject", f"{name} must be refused"
            assert (done / name).is_file()
        else:
            assert expected[name] != "decode", f"{name}: valid file quarantined: {error}"
            assert (quarantine / name).is_file()
            assert (quarantine / f"{name}.reason.txt").read_text(encoding="utf-8").strip() == error
    assert sorted(p.name for p in root.iterdir()) == ["done", "quarantine"]
    record_property("fuzz_inputs", len(seen))
    for key, value in counts.items():
        record_property(f"fuzz_{key}", value)
    print(f"folder source: {len(seen)} fuzzed files in {elapsed:.1f} s: {dict(counts)}")
    assert counts["decoded"] > 30 and counts["quarantined"] > 100
    assert {"decode", "reject", "either"} <= set(expected.values())

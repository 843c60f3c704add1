"""Frames per second while a new bundle is rolled out, against the same agent's steady throughput.

The real agent (folder camera, SQLite, ``after: delete``) scores real bottle frames that a feeder keeps queued,
so the camera never waits for input. Every ``--swap-every`` seconds the camera's ``current`` link is pointed at
the other of two bundles (the same model under two versions, both verified): the watcher loads and warms the new
interpreter on its own thread, beside the scoring thread, and swaps between two frames. Throughput comes from
the verdicts' ``processed_at``: frames per second in a window of ``--window`` seconds centred on each swap (the
first verdict of the new version) against the windows that hold no swap. Medians, and their ratio, are printed
and written to ``bench/results/rollout.md``. Run with ``make bench-rollout``.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.rollout import point_link
from tests.harness import variant

QUEUE_AHEAD = 16  # frames kept waiting in the camera folder


def feed(images: list[Path], incoming: Path, stop: threading.Event) -> None:
    """Keep :data:`QUEUE_AHEAD` frames waiting (hard links of real frames under new names)."""
    i = 0
    while not stop.is_set():
        if sum(1 for _ in incoming.iterdir()) >= QUEUE_AHEAD:
            time.sleep(0.005)
            continue
        os.link(images[i % len(images)], incoming / f"f{i:06d}.png")
        i += 1


def windows(times: list[float], centres: list[float], width: float) -> tuple[list[float], list[float]]:
    """Frames/s in windows centred on ``centres``, and in the back-to-back windows that touch none of them."""

    def rate(start: float) -> float:
        return sum(start <= t < start + width for t in times) / width

    around = [rate(c - width / 2) for c in centres]
    steady, start = [], times[0] + width  # the first window holds the start-up
    while start + width <= times[-1]:
        if all(c < start or c >= start + width for c in centres):
            steady.append(rate(start))
        start += width
    return around, steady


def run(bundle: Path, images: list[Path], swaps: int, swap_every: float, width: float) -> dict[str, object]:
    """Score frames through the agent while swapping bundles ``swaps`` times; the figures."""
    with tempfile.TemporaryDirectory(prefix="lw-rollout-") as tmp_name:
        tmp = Path(tmp_name)
        versions = [variant(bundle, tmp / "v1", "bench-1"), variant(bundle, tmp / "v2", "bench-2")]
        link = tmp / "current"
        link.symlink_to("v1")
        incoming = tmp / "incoming"
        incoming.mkdir()
        cfg = AgentConfig.model_validate(
            {
                "agent": {"name": "bench", "data_dir": str(tmp / "data"), "log_level": "WARNING"},
                "database": {"url": f"sqlite:///{tmp / 'bench.db'}"},
                "cameras": [
                    {
                        "id": "cam1",
                        "bundle": str(link),
                        "source": {"type": "folder", "path": str(incoming), "after": "delete", "stable_seconds": 0},
                    }
                ],
                "metrics": {"enabled": False},
            }
        )
        agent = Agent(cfg)
        stop = threading.Event()
        feeder = threading.Thread(target=feed, args=(images, incoming, stop), daemon=True)
        agent.start()
        feeder.start()
        try:
            time.sleep(swap_every)
            for n in range(swaps):
                point_link(link, versions[(n + 1) % 2].name)
                time.sleep(swap_every)
        finally:
            stop.set()
            feeder.join()
            agent.stop()
        with sqlite3.connect(tmp / "bench.db") as conn:
            rows = conn.execute("SELECT processed_at, model_version FROM verdicts ORDER BY processed_at").fetchall()
    times = [datetime.fromisoformat(t).timestamp() for t, _ in rows]
    centres = [times[i] for i in range(1, len(rows)) if rows[i][1] != rows[i - 1][1]]
    around, steady = windows(times, centres, width)
    return {
        "frames": len(rows),
        "swaps_seen": len(centres),
        "fps_steady": statistics.median(steady),
        "fps_swap": statistics.median(around),
        "steady_windows": len(steady),
        "swap_windows": around,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--swaps", type=int, default=6)
    parser.add_argument("--swap-every", type=float, default=8.0, help="seconds between swaps (8)")
    parser.add_argument("--window", type=float, default=2.0, help="seconds per throughput window (2)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/rollout.md"))
    args = parser.parse_args(argv)
    images = sorted((args.datasets / "mvtec_ad" / "bottle" / "test" / "good").glob("*.png"))
    figures = run(args.bundle, images, args.swaps, args.swap_every, args.window)
    ratio = figures["fps_swap"] / figures["fps_steady"]  # type: ignore[operator]
    lines = [
        "# Frames per second during a bundle roll-out",
        "",
        f"`make bench-rollout`: bundle `{args.bundle}`, {os.cpu_count()} cores, folder camera, SQLite, "
        f"{figures['frames']} real bottle frames, {figures['swaps_seen']} swaps {args.swap_every:g} s apart, "
        f"{args.window:g} s windows.",
        "",
        "| | frames/s (median) |",
        "|---|---|",
        f"| steady ({figures['steady_windows']} windows without a swap) | {figures['fps_steady']:.1f} |",
        f"| around a swap ({figures['swaps_seen']} windows centred on the first frame of the new version) "
        f"| {figures['fps_swap']:.1f} |",
        f"| ratio swap / steady | {ratio:.2f} |",
        "",
        "Per swap window: " + ", ".join(f"{v:.1f}" for v in figures["swap_windows"]),  # type: ignore[attr-defined]
        "",
    ]
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

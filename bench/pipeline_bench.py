"""Edge pipeline benchmark: sustained frames/s and latency of decode -> score -> classify -> store -> publish.

Runs on the same real images (bottle test set at its stored 512x512 resolution), same int8 bundle:
1. scoring alone: ``Inspector.inspect`` on decoded images (the floor of this design), with one thread and with
   two threads that each own their interpreters;
2. full pipeline, replayed: read + decode + score + classify + heatmap + SQLite verdict and outbox, with
   MQTT alerts delivered to a real mosquitto on loopback (and, in a second row, S3 to a moto server);
3. the agent's folder camera with one and with two scoring workers: files dropped into the watched folder,
   wall time until every verdict is stored, MQTT and S3 on;
4. the same on good parts only (the test split's ``good`` images, repeated): what a line sees most of the time,
   where no heatmap, image copy, type tail, alert or per-frame S3 object is made (normal verdicts go to S3 in
   batches). The rows above are three quarters defective frames.
Run with ``make bench-pipeline``; figures are printed and written to ``bench/results/pipeline.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import describe_cpu
from bench.services import cpu_seconds, mosquitto, moto_service
from edge_agent.agent import Agent
from edge_agent.bundle import load_bundle
from edge_agent.config import AgentConfig
from edge_agent.inspector import Inspector
from edge_agent.preprocess import read_image
from edge_agent.records import Frame


def _config(
    tmp: Path, bundle: Path, mqtt_port: int | None, s3_url: str | None, incoming: Path, workers: int = 1
) -> AgentConfig:
    """One folder camera; ``workers`` scoring threads, whose interpreters share the 2 cores between them."""
    return AgentConfig.model_validate(
        {
            "agent": {"name": "bench", "data_dir": str(tmp / "data"), "threads": max(1, 2 // workers)},
            "database": {"url": f"sqlite:///{tmp / 'bench.db'}"},
            "cameras": [
                {
                    "id": "cam1",
                    "bundle": str(bundle),
                    "workers": workers,
                    "source": {
                        "type": "folder",
                        "path": str(incoming),
                        "after": "move",  # the default: scored files go to done/
                        "stable_seconds": 0.0,
                        "max_pending": 64,
                    },
                }
            ],
            "mqtt": {"enabled": mqtt_port is not None, "host": "127.0.0.1", "port": mqtt_port or 1883},
            "s3": {"enabled": s3_url is not None, "endpoint_url": s3_url, "bucket": "bench"},
            "metrics": {"enabled": False},
        }
    )


def scoring_alone(bundle: Path, paths: list[Path], repeats: int, workers: int = 1) -> dict[str, float]:
    """Inspector on pre-decoded images, ``workers`` threads each with its own interpreters; ms/frame and frames/s."""
    images = [read_image(p) for p in paths]
    inspectors = [Inspector(load_bundle(bundle), threads=max(1, 2 // workers)) for _ in range(workers)]
    for inspector in inspectors:
        for image in images[:10]:
            inspector.inspect(image)
    times: list[float] = []

    def work(inspector: Inspector, share: list[np.ndarray]) -> None:
        for image in share:
            t0 = time.perf_counter()
            inspector.inspect(image)
            times.append(time.perf_counter() - t0)

    frames = images * repeats
    threads = [
        threading.Thread(target=work, args=(inspector, frames[n::workers])) for n, inspector in enumerate(inspectors)
    ]
    t_all, cpu = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return _summary(times, time.perf_counter() - t_all, time.process_time() - cpu)


def _summary(times: list[float], wall: float, cpu: float, server_cpu: float = 0.0) -> dict[str, float]:
    """Latency percentiles, frames/s, and CPU ms a frame of this process and of the S3 server beside it."""
    ms = np.array(times) * 1000
    return {
        "p50_ms": float(np.median(ms)),
        "p99_ms": float(np.percentile(ms, 99)),
        "fps": len(times) / wall,
        "frames": len(times),
        "cpu_ms": cpu * 1000 / len(times),
        "server_cpu_ms": server_cpu * 1000 / len(times),
    }


def replay(
    bundle: Path,
    paths: list[Path],
    repeats: int,
    mqtt_port: int | None,
    s3_url: str | None,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """Full pipeline per frame from the file on disk, outbox delivered by the running delivery worker; CPU of this
    process until the last frame is stored, of the S3 server (``server_pid``) until the outbox is empty."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        agent = Agent(_config(tmp, bundle, mqtt_port, s3_url, tmp / "in"))
        camera = agent.cameras[0]
        agent.delivery.start()
        times = []
        t_all, cpu, server_cpu = time.perf_counter(), time.process_time(), _server_cpu(server_pid, s3_url)
        for r in range(repeats):
            for path in paths:
                t0 = time.perf_counter()
                frame = Frame("cam1", "replay", f"{r}/{path.parent.name}/{path.name}", datetime.now(UTC), str(path))
                camera.pipeline.process(frame, read_image(path))
                times.append(time.perf_counter() - t0)
        wall, cpu = time.perf_counter() - t_all, time.process_time() - cpu
        t_drain = time.perf_counter()
        while any(agent.store.queue_depths().values()) and time.perf_counter() - t_drain < 120:
            time.sleep(0.1)
        drained = time.perf_counter() - t_drain
        server_cpu = _server_cpu(server_pid, s3_url) - server_cpu
        depths = agent.store.queue_depths()
        agent.stop()
        summary = _summary(times, wall, cpu, server_cpu)
        return {**summary, "drain_after_s": drained, "left_in_outbox": sum(depths.values())}


def _quarantined(agent: Agent) -> float:
    """Frames the agent set aside so far (every camera and reason).

    Reads that one counter: collecting the whole registry runs the state collectors' database queries, which at
    20 polls a second took about 1 ms of CPU a frame from the agent being measured."""
    return sum(
        sample.value
        for family in agent.registry.quarantined.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    )


def folder_run(
    bundle: Path,
    paths: list[Path],
    repeats: int,
    mqtt_port: int | None,
    s3_url: str | None,
    workers: int,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """Files dropped at once into the watched folder (written to a staging folder first, then renamed in, as a
    camera that renames); wall time until every verdict is stored; latency per frame; CPU of this process (the
    agent and the renames) and of the S3 server (``server_pid``) until the outbox is empty."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        incoming, staging = tmp / "in", tmp / "staging"
        incoming.mkdir()
        staging.mkdir()
        agent = Agent(_config(tmp, bundle, mqtt_port, s3_url, incoming, workers))
        done: list[float] = []
        latencies: list[float] = []

        def on_verdict(verdict: Any) -> None:
            done.append(time.perf_counter())
            latencies.append(verdict.latency_ms / 1000)

        agent.on_verdict = on_verdict
        agent.start()
        total = len(paths) * repeats
        names = [f"{r}_{path.parent.name}_{path.name}" for r in range(repeats) for path in paths]
        for name, path in zip(names, paths * repeats, strict=True):  # the camera's writes: not the agent's work
            shutil.copyfile(path, staging / name)
        t0, cpu, server_cpu = time.perf_counter(), time.process_time(), _server_cpu(server_pid, s3_url)
        for name in names:
            os.replace(staging / name, incoming / name)  # whole files only, as a camera that renames
        while len(done) < total and time.perf_counter() - t0 < 600:
            if _quarantined(agent) > 0:
                msg = "a bench frame was quarantined: the measurement would not cover every frame"
                raise RuntimeError(msg)
            time.sleep(0.05)
        wall = (done[-1] if done else time.perf_counter()) - t0
        while any(agent.store.queue_depths().values()) and time.perf_counter() - t0 < 600:
            time.sleep(0.05)
        cpu, server_cpu = time.process_time() - cpu, _server_cpu(server_pid, s3_url) - server_cpu
        agent.stop()
        return {**_summary(latencies, wall, cpu, server_cpu), "wall_s": wall}


def _server_cpu(pid: int | None, s3_url: str | None) -> float:
    """CPU seconds of the S3 server so far, when the run uses it."""
    return cpu_seconds(pid) if pid is not None and s3_url is not None else 0.0


ALONE_1 = "scoring alone, 1 thread (2 interpreter threads)"
ALONE_2 = "scoring alone, 2 threads (1 interpreter thread each)"
GOOD_ALONE = "good parts only: scoring alone, 2 threads"
Measurement = tuple[str, Callable[[], dict[str, Any]], str]


def measurements(
    bundle: Path,
    paths: list[Path],
    good: list[Path],
    repeats: int,
    good_repeats: int,
    port: int,
    s3_url: str,
    server_pid: int | None = None,
) -> list[Measurement]:
    """Every row of the table: (name, run, name of the scoring-alone row it is compared with)."""

    def folder(name: str, files: list[Path], passes: int, workers: int, s3: str | None, base: str) -> Measurement:
        return (name, lambda: folder_run(bundle, files, passes, port, s3, workers, server_pid), base)

    dropped = "files dropped at once"
    rows: list[Measurement] = [
        (ALONE_1, lambda: scoring_alone(bundle, paths, repeats), ALONE_1),
        (ALONE_2, lambda: scoring_alone(bundle, paths, repeats, workers=2), ALONE_2),
        (
            "replay, 1 thread: decode + score + classify + heatmap + SQLite + MQTT",
            lambda: replay(bundle, paths, repeats, port, None),
            ALONE_1,
        ),
        (
            "replay, 1 thread, + S3 mirror (moto on loopback)",
            lambda: replay(bundle, paths, repeats, port, s3_url, server_pid),
            ALONE_1,
        ),
        folder(
            f"folder camera, workers 1 (the default): {dropped}, MQTT (S3 off), until all stored",
            paths,
            repeats,
            1,
            None,
            ALONE_1,
        ),
        folder(f"folder camera, workers 1: {dropped}, MQTT + S3, until all stored", paths, repeats, 1, s3_url, ALONE_1),
        folder(
            f"folder camera, workers 2: {dropped}, MQTT (S3 off), until all stored", paths, repeats, 2, None, ALONE_2
        ),
        folder(f"folder camera, workers 2: {dropped}, MQTT + S3, until all stored", paths, repeats, 2, s3_url, ALONE_2),
    ]
    if good_repeats and good:
        rows += [
            (GOOD_ALONE, lambda: scoring_alone(bundle, good, good_repeats, workers=2), GOOD_ALONE),
            folder(
                "good parts only: folder camera, workers 2, MQTT (S3 off), until all stored",
                good,
                good_repeats,
                2,
                None,
                GOOD_ALONE,
            ),
            folder(
                "good parts only: folder camera, workers 2, MQTT + S3, until all stored",
                good,
                good_repeats,
                2,
                s3_url,
                GOOD_ALONE,
            ),
        ]
    return rows


def table(rows: list[Measurement], runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Markdown rows: medians over the rounds; the ratio is the median of each round's ratio to its baseline."""
    lines = [
        "| run | frames a round | frames/s | p50 ms | p99 ms | ratio to scoring alone with as many threads (fps; "
        "median, rounds' range) "
        "| CPU ms a frame: bench process / S3 server |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, _, base in rows:
        got = runs[name]
        ratios = [r["fps"] / b["fps"] for r, b in zip(got, runs[base], strict=True)]
        ratio = f"{np.median(ratios):.3f} ({min(ratios):.2f}-{max(ratios):.2f})" if name != base else "1.00"
        fps, p50, p99, cpu, server = (
            float(np.median([r[k] for r in got])) for k in ("fps", "p50_ms", "p99_ms", "cpu_ms", "server_cpu_ms")
        )
        cpus = f"{cpu:.1f} / {server:.1f}" if server else f"{cpu:.1f}"
        lines.append(f"| {name} | {got[0]['frames']} | {fps:.1f} | {p50:.1f} | {p99:.1f} | {ratio} | {cpus} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run every measurement in interleaved rounds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, default=Path("bundles/demo-bottle"))
    parser.add_argument(
        "--images",
        type=Path,
        default=Path(os.environ.get("LINEWATCH_DATASETS", "../shared/datasets")) / "mvtec_ad/bottle/test",
    )
    parser.add_argument("--rounds", type=int, default=3, help="every row runs once a round, rows interleaved")
    parser.add_argument("--repeats", type=int, default=2, help="passes over the test images a round")
    parser.add_argument("--good-repeats", type=int, default=8, help="passes over the good images a round (0: skip)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench-access")  # moto accepts any key pair
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench-secret")
    paths = sorted(args.images.rglob("*.png"))
    good = [path for path in paths if path.parent.name == "good"]
    with mosquitto() as port, moto_service(keep_alive=True) as s3:
        pid = s3.proc.pid if s3.proc is not None else None
        rows = measurements(args.bundle, paths, good, args.repeats, args.good_repeats, port, s3.endpoint_url, pid)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in rows}
        for _ in range(args.rounds):
            for name, run, _ in rows:
                runs[name].append(run())
    replayed, replayed_s3 = (runs[name][-1] for name, _, _ in rows[2:4])
    bundle = load_bundle(args.bundle)
    text = "\n".join(table(rows, runs)) + (
        f"\n\nBundle {bundle.name} {bundle.version}; {len(paths)} bottle test images (512x512 PNG) x {args.repeats} "
        f"a round ({len(good)} good images x {args.good_repeats} for the good-parts rows), {args.rounds} rounds with "
        "the rows interleaved; frames/s, p50 and p99 are medians over the rounds, the ratio the median of each round's "
        f"ratio to its scoring-alone row. {describe_cpu()}; outbox left after the last round: "
        f"{replayed['left_in_outbox']} (MQTT), {replayed_s3['left_in_outbox']} (MQTT+S3), drained "
        f"{replayed_s3['drain_after_s']:.1f} s after the last frame. "
        "Latency: per frame of the whole pipeline for replay rows, of scoring (Inspector) for the folder rows. "
        "CPU: process CPU time (every thread: scoring, delivery, the bench's renames into the watched folder) per "
        "frame, until the outbox is empty for the folder rows; the S3 server separately: moto's S3 application "
        "(Python) on the same 2 cores, served with HTTP keep-alive by waitress (`bench/s3_server.py`; since "
        "2026-12-07: `moto_server` closes the connection after every request, AWS and MinIO do not). The folder "
        "rows write their files to a staging folder before the clock starts (the camera's work; until 2026-12-07 the "
        "copies ran inside the measurement, about 1 ms of CPU a frame), and the camera moves scored files to done/ "
        "(its default; the bench kept them in place until 2026-12-07), so originals are kept as links. "
        "Command: `make bench-pipeline`.\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pipeline.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

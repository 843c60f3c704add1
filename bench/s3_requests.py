"""S3 requests per 1,000 frames: one object per normal verdict (``normal_verdicts: each``, the old way) against
gzipped JSON-lines batches (``batch``, the default), and what that costs a month per camera.

The real agent (folder camera, int8 bundle) scores the same 1,000 real bottle frames in each mode, 1 % of them
defective (a line's defect rate, not the test set's), mirroring to a moto S3 server. Every request the mirror's
boto3 client sends is counted at the client (bucket checks and retries included). The monthly cost uses AWS S3
Standard's published request price ($0.005 per 1,000 PUT requests): per-frame requests as measured, batches at one
per camera per ``batch_seconds``. Run with ``make bench-s3``; figures are printed and written to
``bench/results/s3_requests.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.services import moto_server
from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.delivery.s3 import BATCH_SUFFIX

PUT_PRICE = 0.005 / 1000  # USD per PUT request, AWS S3 Standard
MONTH_SECONDS = 30 * 86400


def run_mode(mode: str, bundle: Path, frames: list[Path], s3_url: str, batch_seconds: float) -> dict[str, Any]:
    """Score ``frames`` through the agent with the mirror in ``mode``; count the requests its client sends."""
    with tempfile.TemporaryDirectory(prefix=f"lw-s3-{mode}-") as tmp_name:
        tmp = Path(tmp_name)
        incoming = tmp / "incoming"
        incoming.mkdir()
        cfg = AgentConfig.model_validate(
            {
                "agent": {"name": "bench", "data_dir": str(tmp / "data"), "log_level": "WARNING"},
                "database": {"url": f"sqlite:///{tmp / 'bench.db'}"},
                "cameras": [
                    {
                        "id": "cam1",
                        "bundle": str(bundle),
                        "source": {"type": "folder", "path": str(incoming), "after": "delete", "stable_seconds": 0},
                    }
                ],
                "s3": {
                    "enabled": True,
                    "endpoint_url": s3_url,
                    "bucket": f"bench-{mode}",
                    "normal_verdicts": mode,
                    "batch_seconds": batch_seconds,
                },
                "metrics": {"enabled": False},
            }
        )
        done = threading.Event()
        verdicts: list[Any] = []

        def on_verdict(verdict: Any) -> None:
            verdicts.append(verdict)
            if len(verdicts) == len(frames):
                done.set()

        agent = Agent(cfg, on_verdict=on_verdict)
        requests: Counter[str] = Counter()
        assert agent.s3 is not None
        events = agent.s3.client.meta.events
        events.register("before-send.s3.*", lambda request, **_: requests.update([request.method]))
        events.register(
            "before-parameter-build.s3.PutObject",
            lambda params, **_: requests.update(["batch"] if params["Key"].endswith(BATCH_SUFFIX) else []),
        )
        agent.start()
        started = time.monotonic()
        for i, path in enumerate(frames):
            shutil.copyfile(path, incoming / f"{i:05d}_{path.parent.name}_{path.name}")
        done.wait(1800)
        seconds = time.monotonic() - started
        agent.stop(flush_seconds=60)  # the last batch goes out here
        anomalous = sum(v.anomalous for v in verdicts)
    return {
        "mode": mode,
        "frames": len(verdicts),
        "anomalous": anomalous,
        "puts": requests["PUT"],
        "batch_puts": requests["batch"],
        "requests": sum(n for method, n in requests.items() if method != "batch"),
        "seconds": seconds,
    }


def monthly_cost(row: dict[str, Any], fps: float, batch_seconds: float) -> float:
    """USD of PUT requests a month for one camera at ``fps``: measured per-frame PUTs, batches by the clock."""
    per_frame = row["per_frame_puts"]
    batches = MONTH_SECONDS / batch_seconds if row["mode"] == "batch" else 0.0
    return (fps * MONTH_SECONDS * per_frame + batches) * PUT_PRICE


def main(argv: list[str] | None = None) -> int:
    """Run both modes on the same frames; print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, default=Path("bundles/demo-bottle"))
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--defect-share", type=float, default=0.01)
    parser.add_argument("--batch-seconds", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/s3_requests.md"))
    args = parser.parse_args(argv)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench-access")  # moto accepts any key pair
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench-secret")
    test = args.datasets / "mvtec_ad" / "bottle" / "test"
    good, bad = sorted(test.glob("good/*.png")), sorted(test.glob("broken_large/*.png"))
    n_bad = round(args.frames * args.defect_share)
    step = args.frames // max(1, n_bad)
    frames = [
        bad[(i // step) % len(bad)] if n_bad and i % step == 0 else good[i % len(good)] for i in range(args.frames)
    ]
    rows = []
    with moto_server() as s3_url:
        for mode in ("each", "batch"):
            row = run_mode(mode, args.bundle, frames, s3_url, args.batch_seconds)
            row["per_frame_puts"] = (row["puts"] - row["batch_puts"]) / row["frames"]
            rows.append(row)
    each, batch = rows
    lines = [
        "### S3 requests per 1,000 frames (`make bench-s3`)",
        "",
        f"{args.frames} real bottle frames ({n_bad} defective, {args.defect_share:.0%}) through the agent's folder "
        f"camera into a moto S3 server; every request of the mirror's client counted. Batches every "
        f"{args.batch_seconds:g} s. Monthly cost per camera: measured PUTs per frame at the frame rate, plus one batch "
        f"per interval; AWS S3 Standard, $0.005 per 1,000 PUT requests, 30 days.",
        "",
        "| normal verdicts | frames | anomalous | PUT requests (batches) | all requests | per 1,000 frames | "
        "$/month at 10 fps | $/month at 60 fps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        per_1000 = 1000 * row["requests"] / row["frames"]
        lines.append(
            f"| {row['mode']} | {row['frames']} | {row['anomalous']} | {row['puts']} ({row['batch_puts']}) | "
            f"{row['requests']} | "
            f"{per_1000:.1f} | {monthly_cost(row, 10, args.batch_seconds):.2f} | "
            f"{monthly_cost(row, 60, args.batch_seconds):.2f} |"
        )
    ratio = each["requests"] / max(1, batch["requests"])
    lines += [
        "",
        f"Batches send {ratio:.0f}x fewer requests for these frames; what is left is the anomalous frames' JSON, "
        "heatmap and image (3 PUTs each) and one batch per minute.",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.uname().machine} with {os.cpu_count()} CPU cores, "
        f"bundle {args.bundle}. Command: `make bench-s3`.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``edge-agent`` command line: run, check-config, replay, stats, demo."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.config import AgentConfig, FolderSourceConfig, load_agent_config
from edge_agent.errors import LinewatchError
from edge_agent.preprocess import IMAGE_SUFFIXES

if TYPE_CHECKING:
    from edge_agent.records import VerdictRecord

log = logging.getLogger("edge_agent")


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        """Render a record as JSON."""
        data = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data)


def setup_logging(level: str, fmt: str) -> None:
    """Greppable text (``ts level logger: key=value ...``) or JSON lines on stderr."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def _load(path: Path) -> AgentConfig:
    cfg = load_agent_config(path)
    setup_logging(cfg.agent.log_level, cfg.agent.log_format)
    return cfg


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate the config and that every bundle verifies; start nothing."""
    from edge_agent.bundle import load_bundle

    cfg = _load(args.config)
    for cam in cfg.cameras:
        bundle = load_bundle(cam.bundle)
        where = f" at {bundle.path.resolve()}" if cam.bundle.is_symlink() else ""
        print(
            f"camera {cam.id}: {cam.source.type} source, bundle {bundle.name} version {bundle.version} "
            f"({bundle.digest}){where}"
        )
    print(f"config OK: {args.config}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run the agent until SIGTERM."""
    from edge_agent.agent import Agent, verdict_line

    cfg = _load(args.config)
    agent = Agent(cfg, on_verdict=(lambda v: print(verdict_line(v), flush=True)) if args.print_verdicts else None)
    agent.start()
    try:
        agent.run_forever()
    finally:
        agent.stop()
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Feed the images of a folder through one camera's pipeline (no source, no waiting) and print verdicts."""
    from edge_agent.agent import Agent, verdict_line
    from edge_agent.errors import ImageDecodeError
    from edge_agent.preprocess import read_image
    from edge_agent.records import Frame

    cfg = _load(args.config)
    agent = Agent(cfg, on_verdict=lambda v: print(verdict_line(v), flush=True))
    camera = next((c for c in agent.cameras if c.cfg.id == args.camera), agent.cameras[0])
    agent.delivery.start()
    files = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    for path in files:
        frame_id = f"replay/{path.relative_to(args.folder).as_posix()}"
        frame = Frame(camera.cfg.id, "replay", frame_id, datetime.now(UTC), str(path))
        try:
            camera.pipeline.process(frame, read_image(path, camera.pipeline.inspector.input_side))
        except ImageDecodeError as err:
            log.warning("skipped %s", err)
    agent.stop(flush_seconds=args.flush_seconds)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Print frame/anomaly counts and outbox queue depths from the database."""
    from edge_agent.agent import summary
    from edge_agent.store import Store

    cfg = _load(args.config)
    store = Store(cfg.database.url, cfg.database.busy_timeout_ms)
    print(summary(store))
    store.close()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Start the agent on its folder camera, drop real images into the folder like a camera, print verdicts."""
    from edge_agent.agent import Agent, summary, verdict_line

    cfg = _load(args.config)
    cam = next(c for c in cfg.cameras if isinstance(c.source, FolderSourceConfig))
    assert isinstance(cam.source, FolderSourceConfig)
    incoming = cam.source.path
    incoming.mkdir(parents=True, exist_ok=True)
    seen: list[str] = []

    def on_verdict(verdict: VerdictRecord) -> None:
        seen.append(verdict.frame_id)
        print(verdict_line(verdict), flush=True)

    agent = Agent(cfg, on_verdict=on_verdict)
    agent.start()
    files = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    for path in files:  # write under a temporary name, then rename: what a camera should do
        name = f"{stamp}_{path.parent.name}_{path.name}"
        shutil.copyfile(path, incoming / f".{name}.part")
        (incoming / f".{name}.part").rename(incoming / name)
    deadline = time.monotonic() + args.timeout
    while len(seen) < len(files) and time.monotonic() < deadline:
        time.sleep(0.2)
    agent.stop()
    print(summary(agent.store))
    print(
        f"demo: {len(seen)} of {len(files)} images scored; database {cfg.database.url}; "
        f"heatmaps under {cfg.agent.data_dir / 'heatmaps'}"
    )
    return 0 if len(seen) == len(files) else 1


def cmd_publish_bundle(args: argparse.Namespace) -> int:
    """Upload a bundle for a camera's fleet prefix (``bundle_s3_prefix``) and make it the version to run."""
    from edge_agent.delivery.s3 import s3_client
    from edge_agent.fleet import publish_bundle

    cfg = _load(args.config)
    cam = next((c for c in cfg.cameras if c.id == args.camera), None)
    if cam is None or cam.bundle_s3_prefix is None:
        print(f"error: camera {args.camera!r} has no bundle_s3_prefix in {args.config}", file=sys.stderr)
        return 2
    client, _ = s3_client(cfg.s3)
    version = publish_bundle(client, cfg.s3.bucket, cam.bundle_s3_prefix, args.bundle, activate=not args.stage_only)
    print(f"published {args.bundle} as {version} to s3://{cfg.s3.bucket}/{cam.bundle_s3_prefix}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="linewatch-agent", description="linewatch edge agent")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        "run": (cmd_run, "run the agent until SIGTERM"),
        "check-config": (cmd_check_config, "validate the config and bundles, then exit"),
        "replay": (cmd_replay, "score the images of a folder and print verdicts"),
        "stats": (cmd_stats, "print counts and queue depths"),
        "demo": (cmd_demo, "run the agent and feed it a folder of images like a camera"),
        "publish-bundle": (cmd_publish_bundle, "upload a bundle to a camera's S3 fleet prefix and make it current"),
    }
    for name, (func, text) in commands.items():
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--config", required=True, type=Path, help="agent YAML")
        cmd.set_defaults(func=func)
        if name == "run":
            cmd.add_argument("--print-verdicts", action="store_true", help="print one line per verdict")
        if name == "replay":
            cmd.add_argument("folder", type=Path)
            cmd.add_argument("--camera", default=None, help="camera id (default: the first)")
            cmd.add_argument("--flush-seconds", type=float, default=10.0)
        if name == "demo":
            cmd.add_argument("--images", type=Path, required=True, help="folder of images to feed")
            cmd.add_argument("--timeout", type=float, default=300.0)
        if name == "publish-bundle":
            cmd.add_argument("--camera", required=True, help="camera whose bundle_s3_prefix receives it")
            cmd.add_argument("--bundle", required=True, type=Path, help="the verified bundle folder")
            cmd.add_argument("--stage-only", action="store_true", help="upload without making it current")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; a bad config prints its key paths and exits 2 without starting anything."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except LinewatchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

"""``linewatch-review`` (or ``python -m review.cli``): serve, hash-password, check-config, export, sync-s3.

``serve`` runs the Streamlit page (``review/app.py``) bound to one address, headless, without usage statistics.

``hash-password`` reads the password from stdin when it is not a terminal (first line), else asks twice
without echo; it prints only the hash, for an environment variable or a systemd credential.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from edge_agent.errors import LinewatchError
from edge_agent.secrets import read_secret
from review.auth import DEFAULT_ITERATIONS, MIN_ITERATIONS, HashFormatError, hash_password, parse_hash
from review.config import ReviewConfig, load_review_config


def _read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        print("error: the passwords differ", file=sys.stderr)
        raise SystemExit(2)
    return first


def cmd_hash_password(args: argparse.Namespace) -> int:
    """Print the PBKDF2-SHA256 hash of a password read from stdin or the terminal."""
    password = _read_password()
    if len(password) < args.min_length:
        print(f"error: the password needs at least {args.min_length} characters", file=sys.stderr)
        return 2
    print(hash_password(password, iterations=args.iterations))
    return 0


def _user_status(cfg: ReviewConfig) -> list[str]:
    lines = []
    for user in cfg.users:
        where = (
            f"env {user.password_hash_env}"
            if user.password_hash_env
            else f"credential {user.password_hash_credential}"
            if user.password_hash_credential
            else "inline hash"
        )
        stored = user.password_hash or read_secret(user.password_hash_env, user.password_hash_credential)
        try:
            state = "ok" if stored and parse_hash(stored) else "MISSING"
        except HashFormatError:
            state = "MALFORMED"
        lines.append(f"user {user.name} ({user.role}): hash from {where}: {state}")
    return lines


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate the config and report whether each user can log in; start nothing."""
    cfg = load_review_config(args.config)
    for line in _user_status(cfg):
        print(line)
    print(f"source: {cfg.source.type}; bundles: {cfg.paths.bundles_dir}")
    print(f"config OK: {args.config}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write the reviewed verdicts as a labelled data set (folder layout for training/data.py)."""
    from review.db import ReviewStore
    from review.export import export_dataset

    cfg = load_review_config(args.config)
    out = args.out or cfg.paths.export_dir / datetime.now(UTC).strftime("review-%Y%m%dT%H%M%S")
    store = ReviewStore(cfg.database.url, cfg.database.busy_timeout_ms)
    try:
        report = export_dataset(store, out, cfg.paths.media_root)
    finally:
        store.close()
    print(f"exported {report.total} images to {out}: {report.counts}; unsure skipped: {report.skipped_unsure}")
    for line in report.missing_images:
        print(f"missing original: {line}", file=sys.stderr)
    return 0


def cmd_sync_s3(args: argparse.Namespace) -> int:
    """Copy new verdicts from the S3 mirror into the review database."""
    from review.db import ReviewStore
    from review.s3_source import sync_from_s3

    cfg = load_review_config(args.config)
    if cfg.source.type != "s3":
        print("error: source.type is not s3", file=sys.stderr)
        return 2
    store = ReviewStore(cfg.database.url, cfg.database.busy_timeout_ms)
    try:
        report = sync_from_s3(cfg.source, store)
    finally:
        store.close()
    print(f"S3 sync: {report.listed} records listed, {report.added} added, {report.errors} errors")
    return 0 if report.errors == 0 else 1


def cmd_serve(args: argparse.Namespace) -> int:
    """Validate the config, then replace this process with the Streamlit server of the review page."""
    load_review_config(args.config)
    app = Path(__file__).with_name("app.py")
    argv = [sys.executable, "-m", "streamlit", "run", str(app), "--server.headless", "true"]
    argv += ["--server.address", args.address, "--server.port", str(args.port)]
    argv += ["--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer"]
    argv += ["--", "--config", str(args.config)]
    os.execv(sys.executable, argv)
    return 0  # not reached


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="linewatch-review", description="linewatch review page and its tools")
    sub = parser.add_subparsers(dest="command", required=True)
    hp = sub.add_parser("hash-password", help="print the hash of a password read from stdin or the terminal")
    hp.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS, help=f"at least {MIN_ITERATIONS}")
    hp.add_argument("--min-length", type=int, default=8, help="refuse shorter passwords")
    hp.set_defaults(func=cmd_hash_password)
    for name, func, text in (
        ("check-config", cmd_check_config, "validate the config and the users' hashes"),
        ("export", cmd_export, "export reviewed frames as a labelled data set"),
        ("sync-s3", cmd_sync_s3, "copy new verdicts from the S3 mirror"),
        ("serve", cmd_serve, "run the review page (Streamlit)"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--config", required=True, type=Path, help="review YAML")
        cmd.set_defaults(func=func)
        if name == "serve":
            cmd.add_argument("--address", default="127.0.0.1", help="address to listen on")
            cmd.add_argument("--port", type=int, default=8501)
        if name == "export":
            cmd.add_argument("--out", type=Path, default=None, help="new folder (default under paths.export_dir)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; a bad config prints its key paths and exits 2."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except (LinewatchError, ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

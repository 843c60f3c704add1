"""Loopback services for benchmarks: the test harness's mosquitto broker and moto S3 server as context managers."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.harness import MosquittoService, MotoS3Service, free_port, moto_binary

REPO = Path(__file__).resolve().parents[1]

__all__ = ["cpu_seconds", "free_port", "mosquitto", "moto_server", "moto_service"]


@contextlib.contextmanager
def mosquitto() -> Iterator[int]:
    """Run mosquitto on a free loopback port; yields the port."""
    with tempfile.TemporaryDirectory() as tmp:
        service = MosquittoService(Path(tmp))
        service.start()
        try:
            yield service.port
        finally:
            service.stop()


class KeepAliveS3Service(MotoS3Service):
    """moto's S3 application served by waitress (``bench.s3_server``): connections kept open, as AWS and MinIO."""

    def command(self) -> list[str]:
        return [sys.executable, "-m", "bench.s3_server", "--host", self.host, "--port", str(self.port)]

    def popen_kwargs(self) -> dict[str, object]:
        return {"cwd": REPO}


@contextlib.contextmanager
def moto_service(keep_alive: bool = False) -> Iterator[MotoS3Service]:
    """Run moto's S3 API on a free loopback port; yields the running service (``endpoint_url``, ``proc``).

    ``keep_alive`` serves it with waitress (:mod:`bench.s3_server`), else with ``moto_server`` (werkzeug's
    development server, which closes the connection after every request).
    """
    binary = moto_binary()
    if binary is None:
        raise RuntimeError('moto_server not found: pip install "moto[server]"')
    with tempfile.TemporaryDirectory() as tmp:
        service = KeepAliveS3Service(Path(tmp), binary) if keep_alive else MotoS3Service(Path(tmp), binary)
        service.start(timeout=60.0)
        try:
            yield service
        finally:
            service.stop()


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """Run moto's S3 server on a free loopback port; yields its endpoint URL."""
    with moto_service() as service:
        yield service.endpoint_url


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (a loopback server beside the agent) has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

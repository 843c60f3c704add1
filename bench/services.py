"""Loopback services for benchmarks: the test harness's mosquitto broker and moto S3 server as context managers."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.harness import MosquittoService, MotoS3Service, free_port, moto_binary

__all__ = ["free_port", "mosquitto", "moto_server"]


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


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """Run moto's S3 server on a free loopback port; yields its endpoint URL."""
    binary = moto_binary()
    if binary is None:
        raise RuntimeError('moto_server not found: pip install "moto[server]"')
    with tempfile.TemporaryDirectory() as tmp:
        service = MotoS3Service(Path(tmp), binary)
        service.start(timeout=60.0)
        try:
            yield service.endpoint_url
        finally:
            service.stop()

"""Real services for integration tests: a mosquitto broker and a moto S3 server on free loopback ports.

Import the fixtures into a test module with ``from tests.services import mosquitto, moto_s3  # noqa: F401``
(``mosquitto_auth``: password only; ``mosquitto_tls``: TLS with a throwaway CA, passwords, no anonymous).
Both objects have ``stop()`` / ``start()`` to simulate an outage; they come back on the same port.
``postgres``: a PostgreSQL cluster of its own; ``pg_url``: a fresh database on it per test.
Note: moto keeps its state in memory, so a restarted moto server has no buckets. The services themselves live in
``tests/harness.py`` (the benchmarks use them too).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.harness import (
    MOSQUITTO,
    MOSQUITTO_PASSWD,
    MosquittoService,
    MosquittoTLSService,
    MotoS3Service,
    Service,
    free_port,
    moto_binary,
)
from tests.postgres import PostgresService, postgres_bin_dir

__all__ = ["free_port", "mosquitto", "mosquitto_auth", "mosquitto_tls", "moto_s3", "pg_url", "postgres"]


def _running(service: Service, timeout: float = 20.0) -> Iterator[Service]:
    """Start ``service``, hand it to the tests, stop it at the end of the session."""
    service.start(timeout)
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory):
    """A running mosquitto broker (``host``, ``port``, ``stop()``, ``start()``), killed at session end."""
    if not os.access(MOSQUITTO, os.X_OK):
        pytest.fail(f"mosquitto not found at {MOSQUITTO}: apt-get install -y mosquitto (or set LINEWATCH_MOSQUITTO)")
    service = MosquittoService(tmp_path_factory.mktemp("mosquitto"))
    yield from _running(service)


@pytest.fixture(scope="session")
def mosquitto_auth(tmp_path_factory: pytest.TempPathFactory):
    """A second broker that requires a password: ``username`` / ``password`` attributes give the valid pair."""
    if not (os.access(MOSQUITTO, os.X_OK) and os.access(MOSQUITTO_PASSWD, os.X_OK)):
        pytest.fail(f"mosquitto / mosquitto_passwd not found ({MOSQUITTO}, {MOSQUITTO_PASSWD})")
    username, password = "linewatch", f"pw-{os.urandom(8).hex()}"
    service = MosquittoService(tmp_path_factory.mktemp("mosquitto_auth"), users={username: password})
    service.username, service.password = username, password
    yield from _running(service)


@pytest.fixture(scope="session")
def mosquitto_tls(tmp_path_factory: pytest.TempPathFactory):
    """A TLS-only broker requiring a password: ``users`` ({"linewatch": pw, "reader": pw}), ``ca_file``."""
    if not (os.access(MOSQUITTO, os.X_OK) and os.access(MOSQUITTO_PASSWD, os.X_OK)):
        pytest.fail(f"mosquitto / mosquitto_passwd not found ({MOSQUITTO}, {MOSQUITTO_PASSWD})")
    users = {"linewatch": f"tls-pw-{os.urandom(12).hex()}", "reader": f"reader-pw-{os.urandom(12).hex()}"}
    service = MosquittoTLSService(tmp_path_factory.mktemp("mosquitto_tls"), users)
    yield from _running(service)


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory):
    """A running moto S3 server (``endpoint_url``, ``stop()``, ``start()``), killed at session end."""
    binary = moto_binary()
    if binary is None:
        pytest.fail('moto_server not found: pip install "moto[server]"')
    service = MotoS3Service(tmp_path_factory.mktemp("moto"), binary)
    yield from _running(service, timeout=60.0)


@pytest.fixture(scope="session")
def postgres():
    """A running PostgreSQL cluster of its own (``url(db)``, ``create_database(name)``), removed at session end."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.fail("PostgreSQL server binaries not found under /usr/lib/postgresql: apt-get install -y postgresql")
    service = PostgresService(bin_dir)
    try:
        yield from _running(service, timeout=60)
    finally:
        service.remove()


@pytest.fixture
def pg_url(postgres, request) -> str:
    """URL of a fresh, empty database on the session's PostgreSQL cluster (one per test)."""
    name = "t_" + "".join(ch if ch.isalnum() else "_" for ch in request.node.name.lower())[:50] + os.urandom(3).hex()
    return postgres.create_database(name)

"""A throwaway PostgreSQL cluster for tests and benchmarks: Debian's server binaries, a free loopback port.

``initdb`` refuses to run as root, so under root the cluster belongs to the ``postgres`` system user (created by
Debian's package) and lives in a folder of its own under the system temp dir (pytest's folders are root-only).
Authentication is ``trust`` on loopback: the cluster exists for one test session.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.harness import Service, free_port


def postgres_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` (or ``LINEWATCH_PG_BIN``) with initdb and postgres."""
    configured = os.environ.get("LINEWATCH_PG_BIN")
    candidates = [Path(configured)] if configured else []
    root = Path("/usr/lib/postgresql")
    if root.is_dir():
        versions = sorted((p for p in root.iterdir() if p.name.isdigit()), key=lambda p: int(p.name), reverse=True)
        candidates += [v / "bin" for v in versions]
    for folder in candidates:
        if os.access(folder / "initdb", os.X_OK) and os.access(folder / "postgres", os.X_OK):
            return folder
    return None


class PostgresService(Service):
    """One PostgreSQL cluster (superuser ``linewatch``, no password) started and stopped like the other services."""

    stop_signal = signal.SIGINT  # "fast" shutdown: SIGTERM would wait for every client to disconnect
    user = "linewatch"

    def __init__(self, bin_dir: Path) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="linewatch-pg-"))
        super().__init__("postgres", free_port(), self.root / "postgres.log")
        self.bin_dir = bin_dir
        self.run_as: int | None = None
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres" if _user_exists("postgres") else "nobody")
            self.run_as = owner.pw_uid
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self.data = self.root / "data"
        initdb = [str(bin_dir / "initdb"), "-D", str(self.data), "-U", self.user, "-A", "trust"]
        subprocess.run(
            [*initdb, "-E", "UTF8", "--locale=C", "--no-sync"],
            check=True,
            capture_output=True,
            **self.popen_kwargs(),  # type: ignore[arg-type]
        )

    def popen_kwargs(self) -> dict[str, object]:
        return {"user": self.run_as} if self.run_as is not None else {}

    def command(self) -> list[str]:
        settings = ["listen_addresses=127.0.0.1", "fsync=off", "synchronous_commit=off", "full_page_writes=off"]
        options = [arg for setting in settings for arg in ("-c", setting)]
        binary = str(self.bin_dir / "postgres")
        return [binary, "-D", str(self.data), "-p", str(self.port), "-k", str(self.root), *options]

    def ready(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self._dsn(), connect_timeout=1).close()
        except psycopg.OperationalError:
            return False
        return True

    def _dsn(self, database: str = "postgres") -> str:
        return f"host={self.host} port={self.port} user={self.user} dbname={database}"

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL of ``database`` (psycopg 3 driver)."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database; returns its URL."""
        import psycopg

        with psycopg.connect(self._dsn(), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def remove(self) -> None:
        """Stop the server and delete the cluster."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True

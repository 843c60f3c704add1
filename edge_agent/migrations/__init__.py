"""Alembic migrations of the verdict store, run programmatically (no alembic.ini needed).

Examples:
    >>> from sqlalchemy import create_engine
    >>> engine = create_engine("sqlite://")
    >>> upgrade(engine) == head_revision()
    True
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent


def alembic_config() -> Config:
    """An Alembic config pointing at this package (the env reads its connection from ``attributes``)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str:
    """The newest revision id shipped with this package."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        msg = f"no Alembic revisions found in {MIGRATIONS_DIR}"
        raise RuntimeError(msg)
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision a database is at; None for an empty (or pre-Alembic) database."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Apply migrations up to ``revision`` in one transaction; return the revision reached."""
    _run(engine, lambda cfg: command.upgrade(cfg, revision))
    return current_revision(engine)


def downgrade(engine: Engine, revision: str) -> str | None:
    """Revert migrations down to ``revision`` ("base" for an empty schema); return the revision reached."""
    _run(engine, lambda cfg: command.downgrade(cfg, revision))
    return current_revision(engine)


def _run(engine: Engine, step: Callable[[Config], None]) -> None:
    """Run ``step`` in one transaction; on SQLite with foreign keys off, checked before the commit.

    SQLite rebuilds a table to change a constraint; dropping the old ``verdicts`` with foreign keys on would delete
    every outbox and feedback row through ``ON DELETE CASCADE``. The pragma only takes effect outside a
    transaction, so it is set on the driver's connection before the transaction begins.
    """
    cfg = alembic_config()
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection if conn.dialect.name == "sqlite" else None
        enforced = raw is not None and raw.execute("PRAGMA foreign_keys").fetchone() == (1,)
        if raw is not None:
            raw.execute("PRAGMA foreign_keys = OFF")
        try:
            with conn.begin():
                cfg.attributes["connection"] = conn
                step(cfg)
                if raw is not None and (broken := conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()):
                    msg = f"migration left rows whose parent is missing: {broken[:5]}"
                    raise RuntimeError(msg)
        finally:
            if raw is not None and enforced:
                raw.execute("PRAGMA foreign_keys = ON")


def migrate_to_head(engine: Engine, sqlite_file: Path | None = None) -> str:
    """Upgrade to the newest revision; an existing SQLite file is first copied to ``<file>.bak-<revision>``.

    Pass ``sqlite_file`` only for a file that existed before the engine opened it (a new file needs no backup).
    """
    head = head_revision()
    current = current_revision(engine)
    if current == head:
        return head
    if sqlite_file is not None:
        backup = sqlite_file.with_name(f"{sqlite_file.name}.bak-{current or 'base'}")
        if backup.exists():
            log.warning("backup %s already exists, keeping it", backup)
        else:
            backup_sqlite(sqlite_file, backup)
            log.info("database %s at revision %s backed up to %s", sqlite_file, current, backup)
    log.info("migrating database from revision %s to %s", current, head)
    upgrade(engine, "head")
    return head


def backup_sqlite(source: Path, target: Path) -> None:
    """Consistent copy of a live SQLite database (WAL included) via the backup API, as one self-contained file."""
    src = sqlite3.connect(source)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode = DELETE")  # no -wal/-shm beside the copy
        finally:
            dst.close()
    finally:
        src.close()

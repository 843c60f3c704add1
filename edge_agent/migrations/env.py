"""Alembic environment: runs online with the connection handed over in ``config.attributes``.

Importing this module outside an Alembic run does nothing (the package walker of the tests imports it).
"""

from __future__ import annotations

from alembic import context


def run_migrations() -> None:
    """Run the migrations on the connection the caller passed in ``config.attributes['connection']``."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        msg = "edge_agent migrations run programmatically: pass a connection in config.attributes"
        raise RuntimeError(msg)
    context.configure(connection=connection, render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


if getattr(context, "_proxy", None) is not None:
    run_migrations()

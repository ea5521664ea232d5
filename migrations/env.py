"""Alembic environment of the wandb-mirror store.

Runs against the connection that :mod:`mirror.store.migrate` passes in
``config.attributes["connection"]`` (foreign keys off, so batch table rebuilds on SQLite
cannot cascade), or against ``sqlalchemy.url`` when alembic is run by hand.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

import mirror.store.models  # noqa: F401 - registers the tables on the metadata
from mirror.store.engine import make_engine
from mirror.store.models import metadata

config = context.config
target_metadata = metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode rebuilds tables
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url or pass a connection in config.attributes")
    engine = make_engine(url, foreign_keys=False)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

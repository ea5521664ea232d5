"""Engine setup in one place: pragmas, the writer's ``BEGIN IMMEDIATE``, error translation.

SQLite rules of the house (DESIGN.md): WAL so readers never block the writer,
``foreign_keys=ON``, a ``busy_timeout`` so a second writer waits instead of failing, and
``BEGIN IMMEDIATE`` for write transactions so a writer takes the lock up front rather than
failing half-way when it upgrades from a read lock. pysqlite's own transaction handling is
switched off (``isolation_level=None``) and SQLAlchemy's ``begin`` event emits the BEGIN we
want, as SQLAlchemy's SQLite documentation recommends.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import NullPool, StaticPool

from mirror.errors import NotAStoreError, StoreBusyError, StoreError, StoreFullError
from mirror.store.filters import register_sqlite_functions

BUSY_TIMEOUT_MS = 30_000

# Primary SQLite result codes (sqlite3.h), read from ``sqlite_errorcode``.
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
_SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL = 8, 10, 11, 13
_SQLITE_NOTADB = 26

POOL_SIZE = 24  # connections kept open (threads of a server or a sync at once)
POOL_OVERFLOW = 40  # opened beyond that under bursts, closed after use


def make_engine(url: str, *, foreign_keys: bool = True, echo: bool = False) -> Engine:
    """An engine for ``url`` with the house pragmas on every new SQLite connection.

    ``foreign_keys=False`` is for migrations only: batch mode recreates tables, and with
    enforcement on, dropping a parent table would cascade into its children.
    """
    if not url.startswith("sqlite"):
        return create_engine(url, echo=echo, pool_pre_ping=True)

    in_memory = ":memory:" in url or url.rstrip("/") in ("sqlite:", "sqlite:/")
    kwargs: dict[str, Any] = {}
    if in_memory:
        kwargs["poolclass"] = StaticPool  # one shared connection, or the data is gone
    elif not foreign_keys:
        kwargs["poolclass"] = NullPool  # migration connections must not be reused
    else:
        # Keep a connection per busy thread. The default pool keeps 5 and closes the
        # overflow after each use, so a server answering 16+ downloads at once opened a
        # connection (and ran the pragmas below) for most requests.
        kwargs["pool_size"] = POOL_SIZE
        kwargs["max_overflow"] = POOL_OVERFLOW
    engine = create_engine(
        url,
        echo=echo,
        connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
        **kwargs,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves, below
        register_sqlite_functions(dbapi_conn)  # regexp + JSON helpers of compiled filters
        cur = dbapi_conn.cursor()
        try:
            if not in_memory:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
            cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints under WAL
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def writer(engine: Engine) -> Engine:
    """The same engine, whose transactions start with ``BEGIN IMMEDIATE``."""
    return engine.execution_options(sqlite_begin="IMMEDIATE")


def translate(exc: BaseException, *, path: str | None = None) -> StoreError:
    """Map a sqlalchemy/sqlite3 exception to a :mod:`mirror.errors` store error."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    code = getattr(orig, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    where = f" ({path})" if path else ""
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return StoreBusyError(f"the store is locked by another writer{where}", path=path)
    if primary == _SQLITE_FULL:
        return StoreFullError(f"the disk is full; the write was rolled back{where}", path=path)
    if primary in (_SQLITE_READONLY, _SQLITE_IOERR):
        return StoreFullError(
            f"the store cannot be written ({type(orig).__name__}: {orig}){where}", path=path
        )
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return NotAStoreError(f"the store file is corrupt{where}: {orig}", path=path)
    return StoreError(f"store operation failed{where}: {type(orig).__name__}: {orig}", path=path)


@contextmanager
def translated(path: str | None = None) -> Iterator[None]:
    """Re-raise database exceptions of the block as :mod:`mirror.errors` store errors."""
    try:
        yield
    except (SQLAlchemyError, sqlite3.Error) as exc:
        raise translate(exc, path=path) from exc

"""Many rows in one statement: multi-row ``INSERT ... VALUES`` on SQLite.

``executemany`` is the obvious way to write many small rows, and on SQLite it is the
slow one under threads: the sqlite3 module steps once per row and releases the GIL
around every step, so a writer that shares the process with busy threads (a sync's
parsers and downloads) queues for the GIL again after each row. One statement per few
hundred rows needs one step. Values are bound natively (floats stay exact, unlike a
JSON detour). Other databases get ``executemany`` (PostgreSQL refuses an upsert that
touches the same row twice in one statement; SQLite applies the rows in order).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, text

ROWS_PER_STATEMENT = 400  # x columns stays far below SQLite's 32,766 parameters


def insert_rows(
    connection: Connection,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    *,
    on_conflict: str = "",
) -> None:
    """``INSERT INTO table (columns) VALUES ... on_conflict`` for every row of ``rows``.

    ``on_conflict`` is the statement's tail (``ON CONFLICT (...) DO ...``), the same for
    every row; rows are mappings holding at least ``columns``. Later rows win over
    earlier ones with the same key, as they would one statement at a time.
    """
    if not rows:
        return
    head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
    tail = f" {on_conflict}" if on_conflict else ""
    if connection.dialect.name != "sqlite":
        one = "(" + ", ".join(f":{c}" for c in columns) + ")"
        connection.execute(text(head + one + tail), [dict(r) for r in rows])
        return
    marks = "(" + ", ".join("?" * len(columns)) + ")"
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        part = rows[start:start + ROWS_PER_STATEMENT]
        connection.exec_driver_sql(head + ", ".join([marks] * len(part)) + tail,
                                   tuple(row[c] for row in part for c in columns))

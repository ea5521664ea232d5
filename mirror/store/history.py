"""History rows and events: bulk upserts and ordered reads.

These are the hot paths of sync and of every query (hundreds of thousands of rows), so
they go through the session's own DBAPI connection (same transaction, no ORM objects per
row) and :mod:`mirror.store.codec` for exact values. An upsert keyed by ``(run, step)``
makes re-syncing a page a no-op.

On SQLite a page of rows is written by ONE statement, ``json_each`` over
``{"step": "row text", ...}``, not by ``executemany``: the sqlite3 module releases the
GIL around every row it steps, and while other threads are busy (a sync's parsers and
downloads) each re-acquire can wait for the interpreter's switch interval (5 ms). With
one busy thread beside it, ``executemany`` of 10,000 rows took 40 s instead of 20 ms;
the one statement takes 20-40 ms either way. SQLite hands each text back byte for byte.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson
from sqlmodel import Session

from mirror.store import codec

_UPSERT_HISTORY = (
    "INSERT INTO history (run_pk, step, row) VALUES (?, ?, ?) "
    "ON CONFLICT (run_pk, step) DO UPDATE SET row = excluded.row"
)
_UPSERT_EVENT = (
    "INSERT INTO event (run_pk, seq, row) VALUES (?, ?, ?) "
    "ON CONFLICT (run_pk, seq) DO UPDATE SET row = excluded.row"
)
# The same upserts for a whole page: ``?2`` is a JSON object of key -> row text.
_UPSERT_HISTORY_PAGE = (
    "INSERT INTO history (run_pk, step, row) "
    "SELECT ?, CAST(j.key AS INTEGER), j.value FROM json_each(?) AS j WHERE true "
    "ON CONFLICT (run_pk, step) DO UPDATE SET row = excluded.row"
)
_UPSERT_EVENT_PAGE = (
    "INSERT INTO event (run_pk, seq, row) "
    "SELECT ?, CAST(j.key AS INTEGER), j.value FROM json_each(?) AS j WHERE true "
    "ON CONFLICT (run_pk, seq) DO UPDATE SET row = excluded.row"
)
PAGE_ROWS = 5000  # rows per page statement (a few MB of JSON at most)


def value_type(value: Any) -> str:
    """W&B's name for a history value's type (``historyKeys.keys[k].typeCounts``):
    number, string, boolean, nil, list, map, or a media value's ``_type``."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        kind = value.get("_type")
        return kind if isinstance(kind, str) else "map"
    if isinstance(value, list):
        return "list"
    return type(value).__name__


def _dbapi(session: Session) -> Any:
    """The DBAPI connection under the session's current transaction."""
    return session.connection().connection.driver_connection


def _upsert_rows(session: Session, run_pk: int, rows: list[tuple[int, str]],
                 *, page_sql: str, row_sql: str) -> None:
    """Upsert ``(key, text)`` rows of one run: page statements on SQLite (see the module
    docstring), ``executemany`` elsewhere and for what the page cannot carry: a key
    beyond 64 bits or a text with a lone surrogate (these fail as they always did), and
    a NUL character, which SQLite's JSON strings end at (no JSON text holds a raw NUL,
    but a foreign row might). Later duplicates of a key win, either way."""
    dbapi = _dbapi(session)
    if not isinstance(dbapi, sqlite3.Connection):
        dbapi.executemany(row_sql, [(run_pk, key, text) for key, text in rows])
        return
    for start in range(0, len(rows), PAGE_ROWS):
        page = rows[start:start + PAGE_ROWS]
        try:
            doc = orjson.dumps({int(key): text for key, text in page},
                               option=orjson.OPT_NON_STR_KEYS)
        except (TypeError, orjson.JSONEncodeError):
            doc = None
        if doc is None or b"\\u0000" in doc:
            dbapi.executemany(row_sql, [(run_pk, key, text) for key, text in page])
        else:
            dbapi.execute(page_sql, (run_pk, doc.decode("utf-8")))


def save_history(session: Session, run_pk: int, rows: Iterable[Mapping[str, Any]]) -> int:
    """Upsert full history rows (each must hold an integer ``_step``); returns the count."""
    dumps = codec.dumps
    return save_history_texts(session, run_pk, [(int(row["_step"]), dumps(row))
                                                for row in rows])


def save_history_texts(session: Session, run_pk: int, rows: Iterable[tuple[int, str]]) -> int:
    """Upsert history rows given as ``(step, codec text)``: a pull stores the text it
    received and verified (:func:`codec.loads` reads it back exactly) without encoding
    the row again."""
    params = list(rows)
    if params:
        _upsert_rows(session, run_pk, params, page_sql=_UPSERT_HISTORY_PAGE,
                     row_sql=_UPSERT_HISTORY)
    return len(params)


def save_events(session: Session, run_pk: int, rows: Iterable[Mapping[str, Any]],
                start_seq: int = 0) -> int:
    """Upsert system-metric rows at positions ``start_seq, start_seq+1, ...``."""
    dumps = codec.dumps
    params = [(start_seq + i, dumps(row)) for i, row in enumerate(rows)]
    if params:
        _upsert_rows(session, run_pk, params, page_sql=_UPSERT_EVENT_PAGE,
                     row_sql=_UPSERT_EVENT)
    return len(params)


def iter_history(
    session: Session,
    run_pk: int,
    min_step: int | None = None,
    max_step: int | None = None,
    *,
    batch: int = 5000,
) -> Iterator[dict[str, Any]]:
    """Rows with ``min_step <= _step < max_step`` in step order, decoded exactly."""
    sql = "SELECT row FROM history WHERE run_pk = ?"
    args: list[Any] = [run_pk]
    if min_step is not None:
        sql += " AND step >= ?"
        args.append(min_step)
    if max_step is not None:
        sql += " AND step < ?"
        args.append(max_step)
    sql += " ORDER BY step"
    cur = _dbapi(session).execute(sql, args)
    loads = codec.loads
    while True:
        chunk = cur.fetchmany(batch)
        if not chunk:
            return
        for (text,) in chunk:
            yield loads(text)


def history_steps(session: Session, run_pk: int) -> list[int]:
    """All stored steps of a run, ascending (cheap: the primary key index only)."""
    cur = _dbapi(session).execute(
        "SELECT step FROM history WHERE run_pk = ? ORDER BY step", (run_pk,)
    )
    return [r[0] for r in cur.fetchall()]


def history_bounds(session: Session, run_pk: int) -> tuple[int, int | None, int | None]:
    """``(count, first_step, last_step)`` of a run's stored history."""
    cur = _dbapi(session).execute(
        "SELECT count(*), min(step), max(step) FROM history WHERE run_pk = ?", (run_pk,)
    )
    n, lo, hi = cur.fetchone()
    return int(n), lo, hi


def iter_events(session: Session, run_pk: int) -> Iterator[dict[str, Any]]:
    cur = _dbapi(session).execute(
        "SELECT row FROM event WHERE run_pk = ? ORDER BY seq", (run_pk,)
    )
    loads = codec.loads
    for (text,) in cur:
        yield loads(text)


def delete_history(session: Session, run_pk: int, from_step: int | None = None) -> int:
    """Drop a run's history (from ``from_step`` on), e.g. before swapping in a refetch."""
    if from_step is None:
        cur = _dbapi(session).execute("DELETE FROM history WHERE run_pk = ?", (run_pk,))
    else:
        cur = _dbapi(session).execute(
            "DELETE FROM history WHERE run_pk = ? AND step >= ?", (run_pk, from_step)
        )
    return int(cur.rowcount)


def count_events(session: Session, run_pk: int) -> int:
    cur = _dbapi(session).execute("SELECT count(*) FROM event WHERE run_pk = ?", (run_pk,))
    return int(cur.fetchone()[0])


def replace_events(session: Session, run_pk: int, rows: Iterable[Mapping[str, Any]]) -> int:
    """Swap a run's system-metric rows for ``rows`` (events have no step to resume from)."""
    _dbapi(session).execute("DELETE FROM event WHERE run_pk = ?", (run_pk,))
    return save_events(session, run_pk, rows)

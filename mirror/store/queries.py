"""Read queries the W&B-compatible server needs beyond :mod:`mirror.store.runs`.

The server (``mirror/server``) may not touch SQL; these functions give it exactly the
reads it serves, shaped for paging and sampling:

* runs: filtered/ordered keyset pages (each run with its sort-key values, so a cursor
  names a position that survives concurrent changes), lookup by storage id, the runs of
  a sweep;
* history and events: raw stored JSON text by step window or by chosen steps, so a
  history page is served without decoding and re-encoding every row (the stored text is
  already W&B's wire form once the codec's exactness mark is stripped), plus the key
  statistics behind ``historyKeys``;
* files: keyset pages by name (stable while files are deleted during iteration, as the
  guide's "delete every .png" example does), LIKE patterns, lookup by ``File.id``.

Queries go through SQLAlchemy Core (``text()`` with named parameters, or the models), so
they stay portable to PostgreSQL; the one SQLite-specific fast path (``json_each`` for
key statistics) has a pure-Python fallback.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, bindparam, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from mirror.records import FileRecord, ProjectRecord, RunRecord
from mirror.store import codec
from mirror.store.filters import (
    compile_filters,
    compile_order,
    keyset_after,
    order_columns,
    register_sqlite_functions,
)
from mirror.store.history import value_type
from mirror.store.models import Project, Run, RunFile
from mirror.store.runs import file_record, to_record

__all__ = [
    "count_files",
    "count_project_runs",
    "count_sweep_runs",
    "event_count",
    "event_texts",
    "event_texts_at",
    "file_content",
    "file_page",
    "find_file_by_upstream_id",
    "find_run_by_storage_id",
    "get_project_with_pk",
    "history_key_stats",
    "history_step_range",
    "history_steps_in",
    "history_texts",
    "history_texts_at",
    "iter_history_rows",
    "list_projects_with_pk",
    "run_page",
    "runs_of_sweep",
    "wire_text",
]

_CHUNK = 500  # bound parameter lists (SQLite's limit is 32766, PostgreSQL's 65535)

_PROJECT_FIELDS = [n for n in ProjectRecord.__dataclass_fields__]


def wire_text(stored: str) -> str:
    """Stored codec text -> W&B wire JSON (drop the codec's leading exactness mark)."""
    return stored[1:] if stored.startswith(codec.EXACT_MARK) else stored


# --- projects ------------------------------------------------------------------------


def _project(row: Project) -> tuple[int, ProjectRecord]:
    assert row.pk is not None
    return row.pk, ProjectRecord(**{n: getattr(row, n) for n in _PROJECT_FIELDS})


def get_project_with_pk(
    session: Session, entity: str, name: str
) -> tuple[int, ProjectRecord] | None:
    """``(pk, record)`` of ``entity/name``; the pk stands in for an unknown ``internalId``."""
    row = session.execute(
        select(Project).where(Project.entity == entity, Project.name == name)  # type: ignore[arg-type]
    ).scalar()
    return None if row is None else _project(row)


def list_projects_with_pk(
    session: Session, entity: str, *, offset: int = 0, limit: int | None = None
) -> list[tuple[int, ProjectRecord]]:
    """Projects of an entity by name, one page."""
    stmt = (
        select(Project)
        .where(Project.entity == entity)  # type: ignore[arg-type]
        .order_by(Project.name, Project.pk)  # type: ignore[arg-type]
        .offset(offset)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return [_project(r) for r in session.execute(stmt).scalars()]


# --- runs ----------------------------------------------------------------------------


def _where(filters: Mapping[str, Any] | str | None) -> ColumnElement[bool] | None:
    """The where-clause of W&B's Mongo-style filters (``None``/``{}``: no filter)."""
    empty = filters is None or filters == {} or (
        isinstance(filters, str) and filters.strip() in ("", "{}", "null")
    )
    return None if empty else compile_filters(filters)


def _ensure_sql_functions(session: Session) -> None:
    """Install the SQL functions compiled filters call, once per pooled SQLite connection.

    ``mirror.store.filters`` expects the engine's ``connect`` hook to do this; doing it
    here too (tracked in the pool record's ``info``) keeps the server working whether or
    not that hook is in place.
    """
    if session.get_bind().dialect.name != "sqlite":
        return
    pooled = session.connection().connection
    if pooled.info.get("mirror_sql_functions"):
        return
    register_sqlite_functions(pooled.driver_connection)  # type: ignore[arg-type]
    pooled.info["mirror_sql_functions"] = True


def run_page(
    session: Session,
    entity: str,
    project: str,
    *,
    filters: Mapping[str, Any] | str | None = None,
    order: str | None = None,
    after: Sequence[Any] | None = None,
    offset: int = 0,
    limit: int | None = None,
) -> list[tuple[RunRecord, list[Any]]]:
    """One keyset page of a project's live runs, filtered and ordered.

    Returns each run with its sort-key values (the last one is the pk, which makes the
    order total); pass a run's values back as ``after`` to get the runs that follow it.
    Unlike an offset, that position survives runs being added, deleted or tombstoned
    while a client pages (``for run in api.runs(): run.delete()`` must not skip any).
    ``offset`` skips that many more (for old-style positional cursors). Raises
    ``ValueError`` if ``after`` does not fit the order (a cursor of another order).
    """
    where = _where(filters)
    columns = order_columns(order)
    _ensure_sql_functions(session)
    keys = [c.expr.label(f"k{i}") for i, c in enumerate(columns)]
    stmt = select(Run, *keys).where(
        Run.entity == entity,  # type: ignore[arg-type]
        Run.project == project,  # type: ignore[arg-type]
        Run.tombstoned == False,  # type: ignore[arg-type]  # noqa: E712
    )
    if where is not None:
        stmt = stmt.where(where)
    if after is not None:
        stmt = stmt.where(keyset_after(columns, list(after)))
    stmt = stmt.order_by(*compile_order(order))
    if offset:
        stmt = stmt.offset(offset)
    if limit is not None:
        stmt = stmt.limit(limit)
    return [(to_record(row[0]), list(row[1:])) for row in session.execute(stmt)]


def count_project_runs(
    session: Session, entity: str, project: str, filters: Mapping[str, Any] | str | None = None
) -> int:
    """``runCount(filters)``: live runs of a project matching the filters."""
    where = _where(filters)
    _ensure_sql_functions(session)
    stmt = select(func.count()).select_from(Run).where(
        Run.entity == entity,  # type: ignore[arg-type]
        Run.project == project,  # type: ignore[arg-type]
        Run.tombstoned == False,  # type: ignore[arg-type]  # noqa: E712
    )
    if where is not None:
        stmt = stmt.where(where)
    return int(session.execute(stmt).scalar_one())


def find_run_by_storage_id(session: Session, storage_id: str) -> RunRecord | None:
    """The live run whose stored ``storage_id`` (W&B's ``Run.id``) is ``storage_id``."""
    row = session.execute(
        select(Run).where(
            Run.storage_id == storage_id,  # type: ignore[arg-type]
            Run.tombstoned == False,  # type: ignore[arg-type]  # noqa: E712
        ).order_by(Run.pk)  # type: ignore[arg-type]
    ).scalar()
    return None if row is None else to_record(row)


def _sweep_runs_stmt(entity: str, project: str, sweep: str) -> Any:
    return select(Run).where(
        Run.entity == entity,  # type: ignore[arg-type]
        Run.project == project,  # type: ignore[arg-type]
        Run.sweep_name == sweep,  # type: ignore[arg-type]
        Run.tombstoned == False,  # type: ignore[arg-type]  # noqa: E712
    )


def runs_of_sweep(session: Session, entity: str, project: str, sweep: str) -> list[RunRecord]:
    """Every live run of a sweep, oldest first (for ``bestLoss`` when none is stored)."""
    stmt = _sweep_runs_stmt(entity, project, sweep).order_by(Run.created_at, Run.pk)
    return [to_record(r) for r in session.execute(stmt).scalars()]


def count_sweep_runs(session: Session, entity: str, project: str, sweep: str) -> int:
    sub = _sweep_runs_stmt(entity, project, sweep).subquery()
    return int(session.execute(select(func.count()).select_from(sub)).scalar_one())


# --- history and events --------------------------------------------------------------


def _window(run_pk: int, min_step: int | None, max_step: int | None) -> tuple[str, dict]:
    sql = "run_pk = :run_pk"
    params: dict[str, Any] = {"run_pk": run_pk}
    if min_step is not None:
        sql += " AND step >= :lo"
        params["lo"] = min_step
    if max_step is not None:
        sql += " AND step < :hi"
        params["hi"] = max_step
    return sql, params


def history_steps_in(
    session: Session, run_pk: int, min_step: int | None = None, max_step: int | None = None
) -> list[int]:
    """Steps with ``min_step <= step < max_step``, ascending (primary-key index only)."""
    where, params = _window(run_pk, min_step, max_step)
    rows = session.execute(text(f"SELECT step FROM history WHERE {where} ORDER BY step"), params)
    return [int(r[0]) for r in rows]


def history_step_range(session: Session, run_pk: int) -> tuple[int | None, int | None]:
    """``(first step, last step)`` of a run's history in O(log n) (two index seeks).

    Two scalar subqueries, because SQLite only turns a lone ``min()``/``max()`` into an
    index seek; ``count(*)`` would scan every row of a 100,000-step run.
    """
    row = session.execute(
        text(
            "SELECT (SELECT min(step) FROM history WHERE run_pk = :run_pk),"
            " (SELECT max(step) FROM history WHERE run_pk = :run_pk)"
        ),
        {"run_pk": run_pk},
    ).one()
    return (None if row[0] is None else int(row[0]), None if row[1] is None else int(row[1]))


def _driver_rows(session: Session, sql: str, params: Sequence[Any]) -> list[Any]:
    """Rows of ``sql`` (``?`` placeholders) straight from the DBAPI cursor.

    For the server's hot reads (a history page is 1,000+ rows): SQLAlchemy's result
    processing costs about 8x the query itself there. Drivers that use ``%s``
    (PostgreSQL's) get their placeholders rewritten.
    """
    conn = session.connection()
    if conn.dialect.paramstyle != "qmark":
        sql = sql.replace("?", "%s")
    cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cur.execute(sql, tuple(params))
        return list(cur.fetchall())
    finally:
        cur.close()


def history_texts(
    session: Session, run_pk: int, min_step: int | None = None, max_step: int | None = None
) -> list[str]:
    """Wire JSON of the rows with ``min_step <= step < max_step``, in step order."""
    sql = "SELECT row FROM history WHERE run_pk = ?"
    params: list[Any] = [run_pk]
    if min_step is not None:
        sql += " AND step >= ?"
        params.append(min_step)
    if max_step is not None:
        sql += " AND step < ?"
        params.append(max_step)
    rows = _driver_rows(session, sql + " ORDER BY step", params)
    return [wire_text(r[0]) for r in rows]


def history_texts_at(session: Session, run_pk: int, steps: Sequence[int]) -> list[str]:
    """Wire JSON of the rows at exactly ``steps``, in step order."""
    stmt = text(
        "SELECT step, row FROM history WHERE run_pk = :run_pk AND step IN :steps"
    ).bindparams(bindparam("steps", expanding=True))
    found: list[tuple[int, str]] = []
    for i in range(0, len(steps), _CHUNK):
        chunk = list(steps[i : i + _CHUNK])
        found.extend(
            (int(s), r) for s, r in session.execute(stmt, {"run_pk": run_pk, "steps": chunk})
        )
    found.sort(key=lambda t: t[0])
    return [wire_text(r) for _, r in found]


def iter_history_rows(
    session: Session, run_pk: int, min_step: int | None = None, max_step: int | None = None
) -> Iterator[dict[str, Any]]:
    """Decoded rows with ``min_step <= step < max_step``, in step order."""
    where, params = _window(run_pk, min_step, max_step)
    result = session.execute(
        text(f"SELECT row FROM history WHERE {where} ORDER BY step"), params
    )
    loads = codec.loads
    for (stored,) in result:
        yield loads(stored)


def history_key_stats(session: Session, run_pk: int) -> dict[str, dict[str, int]]:
    """``{key: {type_name: count}}`` over a run's history rows (``historyKeys.keys``).

    Type names follow W&B's ``typeCounts``: ``number``, ``string``, ``boolean``, ``nil``,
    ``list``, ``map`` or a media object's own ``_type`` (``histogram``, ``image-file``...).
    On SQLite the counting runs inside the database with ``json_each`` over the rows it
    can parse; rows it cannot (bare ``NaN``/``Infinity``, which SQLite before 3.42 rejects)
    and other databases are counted in Python.
    """
    stats: dict[str, dict[str, int]] = {}

    def add(key: str, kind: str, n: int) -> None:
        per = stats.setdefault(key, {})
        per[kind] = per.get(kind, 0) + n

    python_rows: Any
    if session.get_bind().dialect.name == "sqlite":
        try:
            result = session.execute(
                text(
                    "SELECT j.key, CASE j.type"
                    " WHEN 'integer' THEN 'number' WHEN 'real' THEN 'number'"
                    " WHEN 'text' THEN 'string' WHEN 'true' THEN 'boolean'"
                    " WHEN 'false' THEN 'boolean' WHEN 'null' THEN 'nil'"
                    " WHEN 'array' THEN 'list'"
                    " ELSE coalesce(json_extract(j.value, '$._type'), 'map') END,"
                    " count(*)"
                    " FROM history AS h, json_each(h.row) AS j"
                    " WHERE h.run_pk = :run_pk AND json_valid(h.row)"
                    " GROUP BY 1, 2"
                ),
                {"run_pk": run_pk},
            )
            for key, kind, n in result:
                add(str(key), str(kind), int(n))
            python_rows = session.execute(
                text("SELECT row FROM history WHERE run_pk = :run_pk AND NOT json_valid(row)"),
                {"run_pk": run_pk},
            )
        except DBAPIError:  # an SQLite built without JSON1: count in Python
            stats.clear()
            python_rows = session.execute(
                text("SELECT row FROM history WHERE run_pk = :run_pk"), {"run_pk": run_pk}
            )
    else:
        python_rows = session.execute(
            text("SELECT row FROM history WHERE run_pk = :run_pk"), {"run_pk": run_pk}
        )
    for (stored,) in python_rows:
        row = codec.loads(stored)
        if isinstance(row, dict):
            for key, value in row.items():
                add(str(key), value_type(value), 1)
    return stats


def event_count(session: Session, run_pk: int) -> int:
    return int(
        session.execute(
            text("SELECT count(*) FROM event WHERE run_pk = :run_pk"), {"run_pk": run_pk}
        ).scalar_one()
    )


def event_texts(session: Session, run_pk: int) -> list[str]:
    """Wire JSON of every system-metrics row, in sequence order."""
    rows = _driver_rows(session, "SELECT row FROM event WHERE run_pk = ? ORDER BY seq", [run_pk])
    return [wire_text(r[0]) for r in rows]


def event_texts_at(session: Session, run_pk: int, positions: Sequence[int]) -> list[str]:
    """Wire JSON of the events at the given 0-based positions (in sequence order)."""
    wanted = set(positions)
    rows = session.execute(
        text("SELECT row FROM event WHERE run_pk = :run_pk ORDER BY seq"), {"run_pk": run_pk}
    )
    return [wire_text(r[0]) for i, r in enumerate(rows) if i in wanted]


# --- files ---------------------------------------------------------------------------


def _files_stmt(run_pk: int, names: Sequence[str] | None, pattern: str | None) -> Any:
    stmt = select(RunFile).where(
        RunFile.run_pk == run_pk,  # type: ignore[arg-type]
        RunFile.tombstoned == False,  # type: ignore[arg-type]  # noqa: E712
    )
    if names:
        stmt = stmt.where(RunFile.name.in_(list(names)))  # type: ignore[attr-defined]
    if pattern is not None:
        stmt = stmt.where(RunFile.name.like(pattern, escape="\\"))  # type: ignore[attr-defined]
    return stmt


def file_page(
    session: Session,
    run_pk: int,
    *,
    names: Sequence[str] | None = None,
    pattern: str | None = None,
    after_name: str | None = None,
    limit: int | None = None,
) -> list[FileRecord]:
    """Live files of a run by name, after ``after_name`` (keyset), at most ``limit``.

    ``names`` are exact names (empty = all); ``pattern`` is a SQL ``LIKE`` pattern
    (``%`` any run, ``_`` one character, ``\\`` escapes), as W&B documents it.
    """
    stmt = _files_stmt(run_pk, names, pattern)
    if after_name is not None:
        stmt = stmt.where(RunFile.name > after_name)
    stmt = stmt.order_by(RunFile.name)
    if limit is not None:
        stmt = stmt.limit(limit)
    return [file_record(r) for r in session.execute(stmt).scalars()]


def count_files(
    session: Session, run_pk: int, names: Sequence[str] | None = None, pattern: str | None = None
) -> int:
    sub = _files_stmt(run_pk, names, pattern).subquery()
    return int(session.execute(select(func.count()).select_from(sub)).scalar_one())


def file_content(
    session: Session, entity: str, project: str, run_id: str, name: str
) -> tuple[str | None, str | None] | None:
    """``(blob_hash, mimetype)`` of a live run file, or None: ONE indexed lookup.

    What a signed storage GET needs, and nothing else: the download path is the most
    frequent request a sync makes (one per file), so it skips building records.
    """
    rows = _driver_rows(
        session,
        "SELECT f.blob_hash, f.mimetype FROM run r JOIN run_file f ON f.run_pk = r.pk"
        " WHERE r.entity = ? AND r.project = ? AND r.run_id = ? AND f.name = ?"
        " AND NOT f.tombstoned",
        [entity, project, run_id, name],
    )
    return (rows[0][0], rows[0][1]) if rows else None


def find_file_by_upstream_id(session: Session, upstream_id: str) -> tuple[int, str] | None:
    """``(run_pk, name)`` of the file whose stored W&B ``File.id`` is ``upstream_id``."""
    row = session.execute(
        select(RunFile.run_pk, RunFile.name).where(RunFile.upstream_id == upstream_id)  # type: ignore[call-overload]
    ).first()
    return None if row is None else (int(row[0]), str(row[1]))

"""Reads of the offline ``Api`` (``mirror.api``) that :mod:`mirror.store.runs` lacks.

The ``Api`` may not touch SQL, so everything it asks the database lives here, shaped so
that the database does the work and Python only sees what the caller returns:

* runs: a filter/order compiled once (:class:`RunsQuery`, so a bad filter fails at
  ``api.runs()``, before any iteration), then the matching primary keys in order from
  ONE filtered, sorted pass; pages of full records are then fetched by key. Paging by
  OFFSET would re-filter and re-sort the project for every page (W&B-style per_page=50
  over 10,000 runs is 200 sorts), and the key list is also a snapshot, so a page never
  skips or repeats a run while sync writes;
* history: rows at chosen steps, keyset pages for ``scan_history``, and the steps a
  sampled read chooses from, with "holds every key" evaluated in SQL through
  :mod:`mirror.store.jsonpath` (the one dialect-aware place for JSON);
* runs come back as :class:`StoredRun`, whose config and summary stay text until used;
* events and run files by run.

JSON is always decoded exactly, through :mod:`mirror.store.codec`.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from itertools import repeat
from typing import Any

import orjson
from sqlalchemy import (
    Boolean,
    ColumnElement,
    Text,
    and_,
    bindparam,
    func,
    or_,
    select,
    true,
    type_coerce,
)
from sqlmodel import Session, col

from mirror.records import FileRecord, RunRecord
from mirror.store import codec, jsonpath
from mirror.store.filters import compile_filters, compile_order
from mirror.store.models import Event, HistoryRow, Project, Run, RunFile
from mirror.store.types import JSONText

__all__ = [
    "LAZY_JSON",
    "HistoryPage",
    "RunsQuery",
    "StepRange",
    "StoredRun",
    "compile_runs_query",
    "complete_step_range",
    "count_files",
    "event_count",
    "events_at",
    "file_page",
    "get_run",
    "history_edge",
    "history_page",
    "history_rows_at",
    "history_steps",
    "known_entities",
    "project_known",
    "run_pks",
    "runs_by_pk",
]

_CHUNK = 500  # bound-parameter lists per statement (SQLite allows 32766, PostgreSQL 65535)


# --- runs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunsQuery:
    """A compiled runs filter and order; opaque to callers (they only pass it back)."""

    where: Any
    order_by: tuple[Any, ...]


def compile_runs_query(filters: Mapping[str, Any] | str | None, order: str | None) -> RunsQuery:
    """Compile W&B's Mongo-style ``filters`` and ``order`` (raises ``FilterError`` now)."""
    return RunsQuery(where=compile_filters(filters), order_by=tuple(compile_order(order)))


def _project_runs(entity: str, project: str) -> list[ColumnElement[bool]]:
    return [
        col(Run.entity) == entity,
        col(Run.project) == project,
        col(Run.tombstoned) == False,  # noqa: E712
    ]


def run_pks(session: Session, entity: str, project: str, query: RunsQuery) -> list[int]:
    """Primary keys of the project's live runs matching ``query``, in its order."""
    stmt = (
        select(col(Run.pk))
        .where(*_project_runs(entity, project), query.where)
        .order_by(*query.order_by)
    )
    return [int(pk) for pk in session.execute(stmt).scalars()]


_RUN_TABLE = Run.__table__  # type: ignore[attr-defined]
_RUN_FIELDS = [f.name for f in fields(RunRecord) if f.name != "pk"]
LAZY_JSON = ("config", "summary", "system_metrics", "history_keys")
"""Run columns big enough to decode only when used (a 50-key config: ~80 microseconds)."""
_IMMUTABLE = frozenset({int, float, str, bool})  # JSON scalars: copying them is sharing


@dataclass
class StoredRun:
    """A run record whose big JSON documents (:data:`LAZY_JSON`) are still stored text.

    Listing 10,000 runs to show their names must not decode 10,000 configs and
    summaries; :meth:`document` decodes one (exactly, through :mod:`codec`) when a
    caller first needs it. Until then those record fields are None.
    """

    record: RunRecord
    texts: dict[str, str | None]
    # Texts of documents decoded by ``document()`` and not handed out for in-place
    # changes since: decoding one again is a cheap exact deep copy (see ``pristine``).
    _kept: dict[str, str] = field(default_factory=dict, repr=False)

    def document(self, name: str) -> Any:
        """The decoded document ``name`` (also stored into the record), or None."""
        if name in self.texts:
            text = self.texts.pop(name)
            setattr(self.record, name, None if text is None else codec.loads(text))
            if text is not None:
                self._kept[name] = text
        return getattr(self.record, name)

    def pristine(self, name: str) -> Any:
        """A deep copy of document ``name`` as it was read (the caller has not changed it).

        Decoding the stored text again costs a fraction of ``copy.deepcopy`` (a 50-key
        summary: ~10 vs ~170 microseconds), which matters when every listed run
        remembers what its user saw.
        """
        current = self.document(name)
        if isinstance(current, dict) and all(
            v is None or type(v) in _IMMUTABLE for v in current.values()
        ):
            return dict(current)  # flat (a typical summary): a shallow copy is a deep one
        text = self._kept.get(name)
        if text is not None and isinstance(current, dict):
            fresh = codec.loads(text)
            if isinstance(fresh, dict):
                return fresh
        return copy.deepcopy(current)

    def complete(self) -> RunRecord:
        """The record with every document decoded, for a caller that may change them."""
        for name in list(self.texts):
            self.document(name)
        self._kept.clear()
        return self.record


_EAGER = [name for name in _RUN_FIELDS if name not in LAZY_JSON]
_STORED_COLUMNS = [
    _RUN_TABLE.c.pk,
    *(_RUN_TABLE.c[name] for name in _EAGER),
    *(type_coerce(_RUN_TABLE.c[name], Text()).label(name) for name in LAZY_JSON),
]


def _stored_run(row: Sequence[Any]) -> StoredRun:
    """A :class:`StoredRun` from a row of :data:`_STORED_COLUMNS` (types already Python)."""
    n_eager = len(_EAGER)
    rec = RunRecord(**dict(zip(_EAGER, row[1 : 1 + n_eager], strict=True)))
    rec.tags = list(rec.tags or [])
    rec.pk = int(row[0])
    return StoredRun(rec, dict(zip(LAZY_JSON, row[1 + n_eager :], strict=True)))


def _stored_runs(session: Session, where: ColumnElement[bool]) -> list[StoredRun]:
    # Plain tuples by position: row mappings cost more than the rest of a listing.
    rows = session.connection().execute(select(*_STORED_COLUMNS).where(where)).all()
    return [_stored_run(row) for row in rows]


def _decode_json(value: Any) -> Any:
    return None if value is None else codec.loads(value)


def _to_bool(value: Any) -> Any:
    return None if value is None else bool(value)


# What SQLAlchemy's result processing does for the eager columns, for the DBAPI path.
_CONVERT = {
    i: (_decode_json if isinstance(_RUN_TABLE.c[name].type, JSONText) else _to_bool)
    for i, name in enumerate(_EAGER, start=1)
    if isinstance(_RUN_TABLE.c[name].type, (JSONText, Boolean))
}
_STORED_SQL = "SELECT {} FROM run WHERE pk IN ({{}})".format(
    ", ".join(f'"{name}"' for name in ["pk", *_EAGER, *LAZY_JSON])
)


def _stored_runs_sqlite(dbapi: Any, pks: Sequence[int]) -> list[StoredRun]:
    """:func:`_stored_runs` by key straight through sqlite3: for a page of 500 runs,
    SQLAlchemy's expanding IN and row processing cost more than SQLite's read."""
    sql = _STORED_SQL.format(",".join("?" * len(pks)))
    out = []
    for raw in dbapi.execute(sql, list(pks)).fetchall():
        row = list(raw)
        for i, convert in _CONVERT.items():
            row[i] = convert(row[i])
        out.append(_stored_run(row))
    return out


def runs_by_pk(session: Session, pks: Sequence[int]) -> list[StoredRun]:
    """Runs of ``pks`` in that order (runs deleted meanwhile are left out), documents lazy.

    Read with a Core ``SELECT`` rather than ORM entities: building ORM objects costs
    more than the rest of the read, and plain records are all the caller wants.
    """
    found: dict[int, StoredRun] = {}
    dbapi = _sqlite_dbapi(session)
    for i in range(0, len(pks), _CHUNK):
        chunk = list(pks[i : i + _CHUNK])
        if dbapi is not None:
            page = _stored_runs_sqlite(dbapi, chunk)
        else:
            page = _stored_runs(session, _RUN_TABLE.c.pk.in_(chunk))
        for stored in page:
            assert stored.record.pk is not None
            found[stored.record.pk] = stored
    return [found[pk] for pk in pks if pk in found]


def get_run(session: Session, entity: str, project: str, run_id: str) -> StoredRun | None:
    """The run ``entity/project/run_id`` (tombstoned or not), documents lazy."""
    c = _RUN_TABLE.c
    found = _stored_runs(
        session, and_(c.entity == entity, c.project == project, c.run_id == run_id)
    )
    return found[0] if found else None


def project_known(session: Session, entity: str, project: str) -> bool:
    """Does the store know ``entity/project`` (a project row, or any run in it)?"""
    has_project = session.execute(
        select(col(Project.pk)).where(col(Project.entity) == entity, col(Project.name) == project)
    ).first()
    if has_project is not None:
        return True
    has_run = session.execute(
        select(col(Run.pk)).where(col(Run.entity) == entity, col(Run.project) == project).limit(1)
    ).first()
    return has_run is not None


def known_entities(session: Session) -> list[str]:
    """Every entity the store holds projects or runs of, sorted."""
    names = set(session.execute(select(col(Project.entity)).distinct()).scalars())
    names.update(session.execute(select(col(Run.entity)).distinct()).scalars())
    return sorted(names)


# --- history -------------------------------------------------------------------------


def _holds_all(keys: Sequence[str]) -> ColumnElement[bool]:
    """SQL: the history row has every key of ``keys`` at its top level (null counts).

    "Holds" means present, as in the server's ``sampledHistory``. Each key is looked up
    with :func:`jsonpath.json_type`; a substring test on the key's JSON spelling runs
    first because it is several times cheaper than parsing the row and rejects most
    rows of a sparse key. It is only valid for text orjson wrote (codec's exact encoder,
    marked by a leading tab, spells non-ASCII keys as ``\\uXXXX``), so tab-marked rows
    skip it.
    """
    # As plain text: compared as the JSON column it is, a bound needle would be JSON-encoded.
    row = type_coerce(HistoryRow.__table__.c.row, Text())  # type: ignore[attr-defined]
    exact = func.substr(row, 1, 1) == codec.EXACT_MARK
    parts: list[ColumnElement[bool]] = []
    for key in dict.fromkeys(keys):
        if key == "_step":  # every row has it (the data model), and it is the primary key
            continue
        needle = orjson.dumps(key).decode("utf-8") + ":"
        parts.append(or_(exact, row.contains(needle, autoescape=True)))
        parts.append(jsonpath.json_type(row, [key]).is_not(None))
    return and_(true(), *parts)


def _window(
    run_pk: int, min_step: int | None, max_step: int | None
) -> list[ColumnElement[bool]]:
    step = col(HistoryRow.step)
    conds = [col(HistoryRow.run_pk) == run_pk]
    if min_step is not None:
        conds.append(step >= min_step)
    if max_step is not None:
        conds.append(step < max_step)
    return conds


def history_steps(
    session: Session,
    run_pk: int,
    keys: Sequence[str] = (),
    min_step: int | None = None,
    max_step: int | None = None,
) -> list[int]:
    """Steps (ascending) of the rows in ``[min_step, max_step)`` holding every key."""
    stmt = select(col(HistoryRow.step)).where(*_window(run_pk, min_step, max_step))
    if keys:
            stmt = stmt.where(_holds_all(keys))
    stmt = stmt.order_by(col(HistoryRow.step))
    return [int(s) for s in session.execute(stmt).scalars()]


def history_edge(session: Session, run_pk: int, last: bool = True) -> int | None:
    """The last (or first) stored step of a run.

    One aggregate per query on purpose: SQLite answers a lone ``max``/``min`` from the
    primary key in O(log n), but scans every row for ``min(step), max(step)`` together.
    """
    stmt = _LAST_STEP if last else _FIRST_STEP  # built once: this runs per run listed
    value = session.connection().execute(stmt, {"run_pk": run_pk}).scalar()
    return None if value is None else int(value)


_LAST_STEP, _FIRST_STEP = (
    select(agg(col(HistoryRow.step))).where(col(HistoryRow.run_pk) == bindparam("run_pk"))
    for agg in (func.max, func.min)
)


@dataclass(frozen=True)
class StepRange:
    """Every step ``first .. first + count - 1`` is stored (and holds the asked keys)."""

    first: int
    count: int


def complete_step_range(
    session: Session, rec: RunRecord, keys: Sequence[str] = ()
) -> StepRange | None:
    """The stored steps as a contiguous range, proven from metadata without a scan.

    Counting rows, or listing which hold a key, reads the whole run (tens of ms per
    100,000 rows), while a sampled read only needs ~500 rows. Upstream's metadata says how
    many rows the run has (``historyLineCount``), its last step (``historyKeys.lastStep``)
    and how many rows hold each key (``typeCounts``). When the stored first and last steps
    (two index lookups) span exactly that many steps, the last step is upstream's, and
    every requested key is in every row, the stored rows are the whole contiguous run:
    sync copies history in step order (its cursor is ``max(step)``), so the store holds
    a prefix of upstream's rows, and this prefix ends at upstream's last step.

    Returns None whenever the metadata is missing or disagrees; the caller then lists
    the steps (exact, slower). Callers still check that every row they fetch exists.
    """
    assert rec.pk is not None
    meta = rec.history_keys if isinstance(rec.history_keys, dict) else {}
    count = rec.history_line_count
    last_meta = meta.get("lastStep", rec.last_step)
    if not count or not isinstance(last_meta, int):
        return None
    last = history_edge(session, rec.pk, last=True)
    if last is None or last != last_meta:
        return None
    first = history_edge(session, rec.pk, last=False)
    assert first is not None
    if last - first + 1 != count:
        return None
    key_meta = meta.get("keys")
    for key in dict.fromkeys(keys):
        if key == "_step":
            continue
        if not isinstance(key_meta, dict) or not _in_every_row(key_meta.get(key), count):
            return None
    return StepRange(first=first, count=count)


def _in_every_row(key_info: Any, count: int) -> bool:
    """Do W&B's ``typeCounts`` for one key add up to ``count`` rows?"""
    if not isinstance(key_info, dict):
        return False
    counts = key_info.get("typeCounts")
    if not isinstance(counts, list):
        return False
    total = 0
    for entry in counts:
        n = entry.get("count") if isinstance(entry, dict) else None
        if not isinstance(n, int):
            return False
        total += n
    return total == count


def history_rows_at(session: Session, run_pk: int, steps: Sequence[int]) -> list[dict[str, Any]]:
    """Decoded rows at exactly ``steps`` (ascending); steps without a row are left out.

    Consecutive steps (a sample as large as the run) are read as one range; others by
    key, in chunks.
    """
    if not steps:
        return []
    ordered = sorted(steps)
    if ordered[-1] - ordered[0] + 1 == len(ordered):
        page = history_page(
            session, run_pk, min_step=ordered[0], max_step=ordered[-1] + 1, limit=len(ordered)
        )
        return list(page.rows())
    found: dict[int, str] = {}
    dbapi = _sqlite_dbapi(session)
    if dbapi is not None:
        # Straight through the DBAPI (as history_page): SQLAlchemy's expanding IN renders
        # 500 parameters per call, and its row objects cost more than the read itself.
        for i in range(0, len(ordered), _CHUNK):
            chunk = ordered[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT step, row FROM history WHERE run_pk = ? AND step IN ({marks})"
            found.update(dbapi.execute(sql, [run_pk, *chunk]).fetchall())
        return [_loads(found[s]) for s in ordered if s in found]
    text_row = type_coerce(HistoryRow.__table__.c.row, Text())  # type: ignore[attr-defined]
    stmt = select(col(HistoryRow.step), text_row).where(
        col(HistoryRow.run_pk) == run_pk,
        col(HistoryRow.step).in_(bindparam("steps", expanding=True)),
    )
    for i in range(0, len(ordered), _CHUNK):
        chunk = ordered[i : i + _CHUNK]
        for step, text in session.connection().execute(stmt, {"steps": chunk}):
            found[int(step)] = text
    return [_loads(found[s]) for s in ordered if s in found]


def _sqlite_dbapi(session: Session) -> Any:
    """The session's sqlite3 connection (its current transaction), None on other dialects."""
    if session.get_bind().dialect.name != "sqlite":
        return None
    return session.connection().connection.driver_connection


@dataclass(frozen=True)
class HistoryPage:
    """One page of ``scan_history``: stored texts, decoded only as :meth:`rows` yields.

    Decoding lazily lets each row be freed as soon as the caller is done with it; a
    page of 1,000 decoded rows held at once costs more (allocation, cache misses) than
    the decoding itself.
    """

    texts: list[tuple[int, str]]

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def last_step(self) -> int | None:
        return self.texts[-1][0] if self.texts else None

    def rows(self) -> Iterator[dict[str, Any]]:
        texts = [text for _step, text in self.texts]
        if any(map(str.startswith, texts, repeat(codec.EXACT_MARK))):
            return map(_loads, texts)
        return _orjson_rows(texts)


def _orjson_rows(texts: list[str]) -> Iterator[Any]:
    """Decode orjson-written texts lazily at C speed (no Python call per row, which is a
    fifth of a long scan); a text orjson refuses (a foreign bare NaN) goes to codec."""
    rest = iter(texts)
    while True:
        try:
            yield from map(orjson.loads, rest)
            return
        except orjson.JSONDecodeError:
            failed = texts[len(texts) - operator.length_hint(rest) - 1]
            yield codec.loads(failed)


def history_page(
    session: Session,
    run_pk: int,
    *,
    min_step: int | None,
    max_step: int | None,
    limit: int,
    keys: Sequence[str] = (),
) -> HistoryPage:
    """Up to ``limit`` rows in ``[min_step, max_step)``, ascending (one keyset page).

    The next page starts at ``last_step + 1``, so memory stays at one page however long
    the run is, and each page is a short read transaction of its own. This is
    ``scan_history``'s inner loop: on SQLite a page without ``keys`` goes straight
    through the DBAPI cursor (as :mod:`mirror.store.history` does), which reads rows
    about twice as fast as a SQLAlchemy result.
    """
    if not keys and session.get_bind().dialect.name == "sqlite":
        sql = "SELECT step, row FROM history WHERE run_pk = ?"
        args: list[Any] = [run_pk]
        if min_step is not None:
            sql += " AND step >= ?"
            args.append(min_step)
        if max_step is not None:
            sql += " AND step < ?"
            args.append(max_step)
        sql += " ORDER BY step LIMIT ?"
        args.append(limit)
        dbapi = session.connection().connection.driver_connection
        assert dbapi is not None
        return HistoryPage(dbapi.execute(sql, args).fetchall())
    text_row = type_coerce(HistoryRow.__table__.c.row, Text())  # type: ignore[attr-defined]
    stmt = select(col(HistoryRow.step), text_row).where(*_window(run_pk, min_step, max_step))
    if keys:
            stmt = stmt.where(_holds_all(keys))
    stmt = stmt.order_by(col(HistoryRow.step)).limit(limit)
    return HistoryPage([(int(step), str(text)) for step, text in session.execute(stmt)])


def _loads(text: str) -> Any:
    """:func:`codec.loads`, inlined for the common case (orjson text, no exactness mark)."""
    if text[:1] != codec.EXACT_MARK:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return codec.loads(text)


# --- events --------------------------------------------------------------------------


def event_count(session: Session, run_pk: int) -> int:
    stmt = select(func.count()).select_from(Event).where(col(Event.run_pk) == run_pk)
    return int(session.execute(stmt).scalar_one())


def events_at(
    session: Session, run_pk: int, positions: Iterable[int] | None = None
) -> list[dict[str, Any]]:
    """System-metric rows in sequence order: all, or those at 0-based ``positions``.

    Positions, not ``seq`` values: the sampled read picks the i-th row whatever its
    ``seq`` (which need not start at 0 after a partial refetch). Only the rows returned
    are decoded.
    """
    text_row = type_coerce(Event.__table__.c.row, Text())  # type: ignore[attr-defined]
    stmt = select(text_row).where(col(Event.run_pk) == run_pk).order_by(col(Event.seq))
    texts = session.connection().execute(stmt).scalars()
    if positions is None:
        return [_loads(text) for text in texts]
    wanted = set(positions)
    return [_loads(text) for i, text in enumerate(texts) if i in wanted]


# --- files ---------------------------------------------------------------------------


def _files_where(
    run_pk: int, names: Sequence[str] | None, pattern: str | None
) -> list[ColumnElement[bool]]:
    conds = [col(RunFile.run_pk) == run_pk, col(RunFile.tombstoned) == False]  # noqa: E712
    if names:
        conds.append(col(RunFile.name).in_(list(names)))
    if pattern is not None:
        # W&B documents MySQL's LIKE: % and _ wildcards, backslash escapes.
        conds.append(col(RunFile.name).like(pattern, escape="\\"))
    return conds


def file_page(
    session: Session,
    run_pk: int,
    *,
    names: Sequence[str] | None = None,
    pattern: str | None = None,
    after_name: str | None = None,
    limit: int | None = None,
) -> list[FileRecord]:
    """Live files of a run by name, strictly after ``after_name`` (keyset), at most ``limit``.

    Keyset paging keeps iteration stable while files are deleted during it (the guide's
    "delete every .png" loop).
    """
    conds = _files_where(run_pk, names, pattern)
    if after_name is not None:
        conds.append(col(RunFile.name) > after_name)
    stmt = select(RunFile).where(*conds).order_by(col(RunFile.name))
    if limit is not None:
        stmt = stmt.limit(limit)
    return [_file_record(r) for r in session.execute(stmt).scalars()]


def count_files(
    session: Session,
    run_pk: int,
    names: Sequence[str] | None = None,
    pattern: str | None = None,
) -> int:
    stmt = select(func.count()).select_from(RunFile).where(*_files_where(run_pk, names, pattern))
    return int(session.execute(stmt).scalar_one())


def _file_record(row: RunFile) -> FileRecord:
    return FileRecord(
        name=row.name,
        size_bytes=row.size_bytes,
        md5=row.md5,
        mimetype=row.mimetype,
        updated_at=row.updated_at,
        url=row.url,
        direct_url=row.direct_url,
        upstream_id=row.upstream_id,
        blob_hash=row.blob_hash,
        tombstoned=row.tombstoned,
    )

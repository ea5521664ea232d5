"""Projects, runs, sweeps and run files: idempotent upserts by natural key, and reads.

Writers take a session from :meth:`Store.transaction`; readers from :meth:`Store.session`.
Records in and records out (:mod:`mirror.records`): ORM rows stay in this package.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import fields
from typing import Any

from sqlalchemy import ColumnElement, func, insert, select, update
from sqlmodel import Session, col

from mirror.records import FileRecord, ProjectRecord, RunRecord, SweepRecord
from mirror.store import run_values
from mirror.store.models import Project, Run, RunFile, Sweep, write_run_values

_RUN_FIELDS = [f.name for f in fields(RunRecord) if f.name != "pk"]
_FILE_FIELDS = [f.name for f in fields(FileRecord)]
_SWEEP_FIELDS = [f.name for f in fields(SweepRecord)]
_PROJECT_FIELDS = [f.name for f in fields(ProjectRecord)]


# --- projects ------------------------------------------------------------------------


def save_project(session: Session, rec: ProjectRecord) -> int:
    """Upsert a project by ``(entity, name)``; returns its pk."""
    row = session.execute(
        select(Project).where(col(Project.entity) == rec.entity, col(Project.name) == rec.name)
    ).scalar()
    if row is None:
        row = Project(entity=rec.entity, name=rec.name)
    for name in _PROJECT_FIELDS:
        value = getattr(rec, name)
        if value is not None:
            setattr(row, name, value)
    row.synced_at = time.time()
    session.add(row)
    session.flush()
    assert row.pk is not None
    return row.pk


def ensure_project(session: Session, entity: str, name: str) -> int:
    """The pk of ``entity/name``, creating a bare project row if needed."""
    pk = session.execute(
        select(col(Project.pk)).where(col(Project.entity) == entity, col(Project.name) == name)
    ).scalar()
    if pk is not None:
        return int(pk)
    return save_project(session, ProjectRecord(entity=entity, name=name))


def get_project(session: Session, entity: str, name: str) -> ProjectRecord | None:
    row = session.execute(
        select(Project).where(col(Project.entity) == entity, col(Project.name) == name)
    ).scalar()
    if row is None:
        return None
    return ProjectRecord(**{n: getattr(row, n) for n in _PROJECT_FIELDS})


def list_projects(session: Session, entity: str | None = None) -> list[ProjectRecord]:
    stmt = select(Project).order_by(col(Project.entity), col(Project.name))
    if entity is not None:
        stmt = stmt.where(col(Project.entity) == entity)
    return [
        ProjectRecord(**{n: getattr(row, n) for n in _PROJECT_FIELDS})
        for row in session.execute(stmt).scalars()
    ]


# --- runs ----------------------------------------------------------------------------


def _run_row(session: Session, entity: str, project: str, run_id: str) -> Run | None:
    return session.execute(
        select(Run).where(
            col(Run.entity) == entity,
            col(Run.project) == project,
            col(Run.run_id) == run_id,
        )
    ).scalar()


def to_record(row: Run) -> RunRecord:
    rec = RunRecord(**{n: getattr(row, n) for n in _RUN_FIELDS})
    rec.tags = list(row.tags or [])
    rec.pk = row.pk
    return rec


def save_run(session: Session, rec: RunRecord, *, only: Iterable[str] | None = None) -> int:
    """Upsert a run by ``(entity, project, run_id)``; returns its pk.

    Every field of ``rec`` is written (a full replace, as upstream sent it), or only the
    fields named in ``only``.
    """
    row = _run_row(session, rec.entity, rec.project, rec.run_id)
    if row is None:
        row = Run(entity=rec.entity, project=rec.project, run_id=rec.run_id)
        row.project_pk = ensure_project(session, rec.entity, rec.project)
    names = _RUN_FIELDS if only is None else list(only)
    for name in names:
        if name in ("entity", "project", "run_id"):
            continue
        setattr(row, name, getattr(rec, name))
    row.synced_at = time.time()
    session.add(row)
    session.flush()
    assert row.pk is not None
    return row.pk


def save_runs(session: Session, recs: Sequence[RunRecord], *, only: Sequence[str]
              ) -> list[int]:
    """:func:`save_run` for many runs, the fields in ``only``, in a few statements.

    The rows are the ones :func:`save_run` writes one by one (the upsert, ``synced_at``,
    the project link, the ``run_value`` rows of config and summary), built without an
    ORM object per run: in a sync the single writer is the bottleneck, and the ORM's
    per-attribute bookkeeping cost more than the SQL. Returns the pks, in order.
    """
    if not recs:
        return []
    keys = [(r.entity, r.project, r.run_id) for r in recs]
    if len(set(keys)) != len(keys):
        raise ValueError("save_runs: a run is listed twice")
    table = Run.__table__  # type: ignore[attr-defined]
    names = [n for n in only if n not in ("entity", "project", "run_id")]
    now = time.time()
    pks = _run_pks(session, recs)
    new = [r for r, key in zip(recs, keys, strict=True) if key not in pks]
    old = [(r, pks[key]) for r, key in zip(recs, keys, strict=True) if key in pks]
    if new:
        projects = {(r.entity, r.project) for r in new}
        project_pks = {key: ensure_project(session, *key) for key in sorted(projects)}
        session.execute(insert(table), [
            {"entity": r.entity, "project": r.project, "run_id": r.run_id,
             "project_pk": project_pks[(r.entity, r.project)], "synced_at": now,
             **{n: getattr(r, n) for n in names}}
            for r in new
        ])
        pks.update(_run_pks(session, new))
    for rec, pk in old:
        session.execute(update(table).where(table.c.pk == pk)
                        .values(synced_at=now, **{n: getattr(rec, n) for n in names}))
    docs = [d for d in run_values.DOCS if d in names]
    connection = session.connection()
    # (For updated runs the SQLite trigger has deleted the rows already; other
    # databases have no trigger.)
    write_run_values(connection, [(pk, d, getattr(rec, d)) for rec, pk in old for d in docs],
                     replace=True)
    write_run_values(connection, [(pks[(r.entity, r.project, r.run_id)], d, getattr(r, d))
                                  for r in new for d in docs], replace=False)
    return [pks[key] for key in keys]


def _run_pks(session: Session, recs: Sequence[RunRecord]) -> dict[tuple[str, str, str], int]:
    """``(entity, project, run_id) -> pk`` of the stored runs among ``recs``."""
    out: dict[tuple[str, str, str], int] = {}
    groups: dict[tuple[str, str], list[str]] = {}
    for r in recs:
        groups.setdefault((r.entity, r.project), []).append(r.run_id)
    for (entity, project), run_ids in groups.items():
        for start in range(0, len(run_ids), 500):
            rows = session.execute(
                select(col(Run.run_id), col(Run.pk)).where(
                    col(Run.entity) == entity, col(Run.project) == project,
                    col(Run.run_id).in_(run_ids[start:start + 500]))
            ).all()
            out.update({(entity, project, run_id): int(pk) for run_id, pk in rows})
    return out


def update_run(session: Session, run_pk: int, **values: Any) -> None:
    """Set the given columns of one run (e.g. ``state=..., heartbeat_at=...``)."""
    row = session.get(Run, run_pk)
    if row is None:
        raise KeyError(run_pk)
    for name, value in values.items():
        if name not in _RUN_FIELDS:
            raise AttributeError(f"run has no field {name!r}")
        setattr(row, name, value)
    session.add(row)
    session.flush()


def get_run(session: Session, entity: str, project: str, run_id: str) -> RunRecord | None:
    row = _run_row(session, entity, project, run_id)
    return None if row is None else to_record(row)


def get_run_by_pk(session: Session, run_pk: int) -> RunRecord | None:
    row = session.get(Run, run_pk)
    return None if row is None else to_record(row)


def run_pk(session: Session, entity: str, project: str, run_id: str) -> int | None:
    pk = session.execute(
        select(col(Run.pk)).where(
            col(Run.entity) == entity,
            col(Run.project) == project,
            col(Run.run_id) == run_id,
        )
    ).scalar()
    return None if pk is None else int(pk)


def query_runs(
    session: Session,
    entity: str,
    project: str,
    *,
    where: ColumnElement[bool] | None = None,
    order_by: Sequence[Any] = (),
    offset: int = 0,
    limit: int | None = None,
    include_tombstoned: bool = False,
) -> list[RunRecord]:
    """Runs of a project, filtered and ordered by expressions from ``mirror.store.filters``."""
    stmt = select(Run).where(col(Run.entity) == entity, col(Run.project) == project)
    if not include_tombstoned:
        stmt = stmt.where(col(Run.tombstoned) == False)  # noqa: E712
    if where is not None:
        stmt = stmt.where(where)
    stmt = stmt.order_by(*order_by) if order_by else stmt.order_by(col(Run.pk))
    if offset:
        stmt = stmt.offset(offset)
    if limit is not None:
        stmt = stmt.limit(limit)
    return [to_record(r) for r in session.execute(stmt).scalars()]


def count_runs(
    session: Session,
    entity: str,
    project: str,
    *,
    where: ColumnElement[bool] | None = None,
    include_tombstoned: bool = False,
) -> int:
    stmt = select(func.count()).select_from(Run).where(
        col(Run.entity) == entity, col(Run.project) == project
    )
    if not include_tombstoned:
        stmt = stmt.where(col(Run.tombstoned) == False)  # noqa: E712
    if where is not None:
        stmt = stmt.where(where)
    return int(session.execute(stmt).scalar_one())


# --- files ---------------------------------------------------------------------------


def file_record(row: RunFile) -> FileRecord:
    """The record of a stored run file row."""
    return FileRecord(**{n: getattr(row, n) for n in _FILE_FIELDS})


def save_file(session: Session, run_pk: int, rec: FileRecord) -> None:
    """Upsert a run file by ``(run, name)``."""
    row = session.get(RunFile, (run_pk, rec.name))
    if row is None:
        row = RunFile(run_pk=run_pk, name=rec.name)
    for name in _FILE_FIELDS:
        if name == "name":
            continue
        setattr(row, name, getattr(rec, name))
    session.add(row)
    session.flush()


def delete_file(session: Session, run_pk: int, name: str) -> bool:
    row = session.get(RunFile, (run_pk, name))
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True


def get_file(session: Session, run_pk: int, name: str) -> FileRecord | None:
    row = session.get(RunFile, (run_pk, name))
    return None if row is None else file_record(row)


def list_files(
    session: Session,
    run_pk: int,
    names: Sequence[str] | None = None,
    *,
    include_tombstoned: bool = False,
) -> list[FileRecord]:
    stmt = select(RunFile).where(col(RunFile.run_pk) == run_pk).order_by(col(RunFile.name))
    if names:
        stmt = stmt.where(col(RunFile.name).in_(list(names)))
    if not include_tombstoned:
        stmt = stmt.where(col(RunFile.tombstoned) == False)  # noqa: E712
    return [file_record(r) for r in session.execute(stmt).scalars()]


# --- sweeps --------------------------------------------------------------------------


def save_sweep(session: Session, rec: SweepRecord) -> int:
    row = session.execute(
        select(Sweep).where(
            col(Sweep.entity) == rec.entity,
            col(Sweep.project) == rec.project,
            col(Sweep.sweep_id) == rec.sweep_id,
        )
    ).scalar()
    if row is None:
        row = Sweep(entity=rec.entity, project=rec.project, sweep_id=rec.sweep_id)
    for name in _SWEEP_FIELDS:
        if name in ("entity", "project", "sweep_id"):
            continue
        setattr(row, name, getattr(rec, name))
    row.synced_at = time.time()
    session.add(row)
    session.flush()
    assert row.pk is not None
    return row.pk


def _sweep_record(row: Sweep) -> SweepRecord:
    return SweepRecord(**{n: getattr(row, n) for n in _SWEEP_FIELDS})


def get_sweep(session: Session, entity: str, project: str, sweep_id: str) -> SweepRecord | None:
    row = session.execute(
        select(Sweep).where(
            col(Sweep.entity) == entity,
            col(Sweep.project) == project,
            col(Sweep.sweep_id) == sweep_id,
        )
    ).scalar()
    return None if row is None else _sweep_record(row)


def list_sweeps(session: Session, entity: str, project: str) -> list[SweepRecord]:
    stmt = (
        select(Sweep)
        .where(col(Sweep.entity) == entity, col(Sweep.project) == project)
        .order_by(col(Sweep.created_at), col(Sweep.pk))
    )
    return [_sweep_record(r) for r in session.execute(stmt).scalars()]

"""What sync needs to know about its own progress, kept in the store.

Cursors (``sync_cursor``) are written in the same transaction as the rows they cover, so
a crash anywhere loses at most the page in flight. A run's history cursor is not stored
separately at all: it is ``max(step)`` of the rows themselves, which can never disagree
with the data.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select, text
from sqlmodel import Session, col

from mirror.records import FileRecord
from mirror.store import bulk
from mirror.store.models import Run, RunFile, SyncCursor


def get_cursor(session: Session, base_url: str, entity: str, project: str, stream: str) -> Any:
    row = session.get(SyncCursor, (base_url, entity, project, stream))
    return None if row is None else row.value


def set_cursor(
    session: Session, base_url: str, entity: str, project: str, stream: str, value: Any
) -> None:
    row = session.get(SyncCursor, (base_url, entity, project, stream))
    if row is None:
        row = SyncCursor(base_url=base_url, entity=entity, project=project, stream=stream,
                         updated_at=time.time())
    row.value = value
    row.updated_at = time.time()
    session.add(row)
    session.flush()


def synced_projects(session: Session, base_url: str) -> list[tuple[str, str]]:
    """Every ``(entity, project)`` that has a cursor for ``base_url``, for `mirror sync`."""
    rows = session.execute(
        select(col(SyncCursor.entity), col(SyncCursor.project))
        .where(col(SyncCursor.base_url) == base_url, col(SyncCursor.project) != "")
        .distinct()
        .order_by(col(SyncCursor.entity), col(SyncCursor.project))
    ).all()
    return [(e, p) for e, p in rows]


def listing_state(session: Session, entity: str, project: str) -> dict[str, tuple[int, str | None]]:
    """``run_id -> (pk, listing_hash)`` for every run of a project (tombstoned included)."""
    rows = session.execute(
        select(col(Run.run_id), col(Run.pk), col(Run.listing_hash)).where(
            col(Run.entity) == entity, col(Run.project) == project
        )
    ).all()
    return {run_id: (pk, h) for run_id, pk, h in rows}


def set_listing_hash(session: Session, run_pk: int, value: str | None) -> None:
    # One UPDATE: loading the run (config, summary: big texts) to set one column cost
    # more than the rest of a small run's sync.
    session.execute(_SET_LISTING_HASH, {"pk": run_pk, "value": value})


_SET_LISTING_HASH = text("UPDATE run SET listing_hash = :value WHERE pk = :pk")


_FILE_COLUMNS = ("upstream_id", "size_bytes", "md5", "mimetype", "updated_at", "url",
                 "direct_url", "blob_hash", "tombstoned")
_FILE_UPSERT = "ON CONFLICT (run_pk, name) DO UPDATE SET " + ", ".join(
    f"{c} = excluded.{c}" for c in _FILE_COLUMNS
)


def save_files(session: Session, run_pk: int, recs: list[FileRecord]) -> None:
    """Upsert a run's file rows as listed upstream, in one statement (``runs.save_file``
    for many; ``INSERT ... ON CONFLICT`` reads the same on SQLite and PostgreSQL)."""
    bulk.insert_rows(
        session.connection(), "run_file", ("run_pk", "name", *_FILE_COLUMNS),
        [{"run_pk": run_pk, "name": r.name, **{c: getattr(r, c) for c in _FILE_COLUMNS}}
         for r in recs],
        on_conflict=_FILE_UPSERT,
    )


def tombstone_runs(session: Session, run_pks: list[int]) -> int:
    """Mark runs deleted upstream. Their data stays; they leave listings by default."""
    now = time.time()
    n = 0
    for pk in run_pks:
        row = session.get(Run, pk)
        if row is not None and not row.tombstoned:
            row.tombstoned = True
            row.tombstoned_at = now
            session.add(row)
            n += 1
    session.flush()
    return n


def file_states(session: Session, run_pk: int) -> dict[str, tuple[str | None, int | None,
                                                                 str | None, str | None]]:
    """``name -> (md5, size, updated_at, blob_hash)`` of a run's live stored files.

    Tombstoned rows are left out: a file deleted upstream and then uploaded again with
    the same bytes in the same second matches its tombstone's md5, size and updatedAt,
    and must still be written back as live.
    """
    rows = session.execute(
        select(
            col(RunFile.name), col(RunFile.md5), col(RunFile.size_bytes),
            col(RunFile.updated_at), col(RunFile.blob_hash),
        ).where(col(RunFile.run_pk) == run_pk, col(RunFile.tombstoned).is_(False))
    ).all()
    return {name: (md5, size, upd, blob) for name, md5, size, upd, blob in rows}


def tombstone_files(session: Session, run_pk: int, names: list[str]) -> None:
    for name in names:
        row = session.get(RunFile, (run_pk, name))
        if row is not None and not row.tombstoned:
            row.tombstoned = True
            session.add(row)
    session.flush()

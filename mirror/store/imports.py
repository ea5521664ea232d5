"""The import map: which local run a run of another system (MLflow, offline wandb) became.

Importers are idempotent because of this table. A source run is identified by
``(source_system, source_uri, source_run_id)``; its row points at the local run and holds
a *fingerprint* of the source state at the last import, so a re-import can tell
"unchanged" (nothing fetched, nothing written) from "updated" without reading the run's
data again. The row is written in the same transaction as the run it describes, so a
crash can never leave a map entry for a half-imported run, nor a run without its entry.

Also here: moving an imported run to another project (a re-import with a different
namespace), and the reverse lookup run -> import entry, which the uploader uses to know
what state of the source a run holds.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlmodel import Session, col

from mirror.store.models import ImportMap, Run
from mirror.store.runs import ensure_project


@dataclass(frozen=True)
class ImportEntry:
    """One row of the import map, as plain values."""

    source_system: str
    source_uri: str
    source_run_id: str
    run_pk: int
    fingerprint: str | None
    imported_at: float


def _entry(row: ImportMap) -> ImportEntry:
    return ImportEntry(
        source_system=row.source_system,
        source_uri=row.source_uri,
        source_run_id=row.source_run_id,
        run_pk=row.run_pk,
        fingerprint=row.fingerprint,
        imported_at=row.imported_at,
    )


def fingerprint(value: Any) -> str:
    """A stable digest of a JSON-able description of a source run's state.

    Canonical JSON (sorted keys, no spaces, NaN spelled out) hashed with sha256, so the
    same state always gives the same string across processes and Python versions.
    """
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True,
                      ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def get_import(
    session: Session, source_system: str, source_uri: str, source_run_id: str
) -> ImportEntry | None:
    """The map entry of one source run, or None if it was never imported."""
    row = session.get(ImportMap, (source_system, source_uri, source_run_id))
    return None if row is None else _entry(row)


def import_of_run(session: Session, run_pk: int) -> ImportEntry | None:
    """The (first) map entry that points at a local run, or None for native runs."""
    row = session.execute(
        select(ImportMap).where(col(ImportMap.run_pk) == run_pk).limit(1)
    ).scalar()
    return None if row is None else _entry(row)


def put_import(
    session: Session,
    source_system: str,
    source_uri: str,
    source_run_id: str,
    run_pk: int,
    fingerprint: str | None,
    *,
    now: float | None = None,
) -> None:
    """Upsert the map entry; call it in the transaction that wrote the run."""
    row = session.get(ImportMap, (source_system, source_uri, source_run_id))
    if row is None:
        row = ImportMap(source_system=source_system, source_uri=source_uri,
                        source_run_id=source_run_id, run_pk=run_pk, imported_at=0.0)
    row.run_pk = run_pk
    row.fingerprint = fingerprint
    row.imported_at = time.time() if now is None else now
    session.add(row)
    session.flush()


def list_imports(
    session: Session, source_system: str, source_uri: str | None = None
) -> list[ImportEntry]:
    """Every map entry of one system (and one source, if given), in a stable order."""
    stmt = select(ImportMap).where(col(ImportMap.source_system) == source_system)
    if source_uri is not None:
        stmt = stmt.where(col(ImportMap.source_uri) == source_uri)
    stmt = stmt.order_by(col(ImportMap.source_uri), col(ImportMap.source_run_id))
    return [_entry(r) for r in session.execute(stmt).scalars()]


def clear_fingerprint(session: Session, run_pk: int) -> None:
    """Forget the fingerprints that point at a run, so its next import refetches it."""
    for row in session.execute(
        select(ImportMap).where(col(ImportMap.run_pk) == run_pk)
    ).scalars():
        row.fingerprint = None
        session.add(row)
    session.flush()


def move_run(
    session: Session, run_pk: int, *, entity: str, project: str, run_id: str | None = None
) -> None:
    """Re-home a local run (new entity/project, optionally a new run id), keeping its pk.

    History, events, files and the import map follow, since they hang on the pk. Used
    when an imported run is re-imported into another namespace, or remapped because its
    W&B id was deleted upstream and cannot be reused.
    """
    row = session.get(Run, run_pk)
    if row is None:
        raise KeyError(run_pk)
    row.entity = entity
    row.project = project
    if run_id is not None:
        row.run_id = run_id
    row.project_pk = ensure_project(session, entity, project)
    session.add(row)
    session.flush()


def run_id_taken(session: Session, entity: str, project: str, run_id: str) -> int | None:
    """The pk of the local run ``entity/project/run_id``, if one exists."""
    pk = session.execute(
        select(col(Run.pk)).where(
            col(Run.entity) == entity, col(Run.project) == project, col(Run.run_id) == run_id
        )
    ).scalar()
    return None if pk is None else int(pk)


__all__ = [
    "ImportEntry",
    "clear_fingerprint",
    "fingerprint",
    "get_import",
    "import_of_run",
    "list_imports",
    "move_run",
    "put_import",
    "run_id_taken",
]

"""SQLModel tables: the whole local data model.

Natural keys make every write an idempotent upsert (DESIGN.md): run
``(entity, project, run_id)``, history ``(run, step)``, event ``(run, seq)``, file
``(run, name)``, blob ``(hash)``, cursor ``(base_url, entity, project, stream)``, import
map ``(source_system, source_uri, source_run_id)``. Integer surrogate keys exist only to
keep child rows small.

Upstream truth and local intent are kept apart: ``run``/``history``/``event``/``run_file``
rows hold what the server sent (written only by sync, or by the importers and local logging
for runs whose source is not W&B); pending local edits live in ``outbox_op`` and are
overlaid on reads. Timestamps the server sent are kept as the server's strings, because
incremental listing must send them back in exactly that format; local bookkeeping times
are float epoch seconds.

Schema changes go through an alembic revision in ``migrations/versions`` and the snapshot
``schema/mirror.sql`` (``python scripts/dump_schema.py``); tests fail otherwise.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    DDL,
    BigInteger,
    Column,
    Connection,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    UniqueConstraint,
    event,
    inspect,
)
from sqlalchemy.orm import Mapper
from sqlmodel import Field, SQLModel

from mirror.store import bulk, run_values
from mirror.store.types import JSONText

# Named constraints, so that alembic batch migrations on SQLite can find them again.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata: MetaData = SQLModel.metadata

RUN_SOURCES = ("wandb", "mlflow", "local")
OUTBOX_STATES = ("pending", "in_flight", "retry", "done", "failed", "conflict", "held")


def _json(nullable: bool = True) -> Any:
    return Field(default=None, sa_type=JSONText, nullable=nullable)


def _run_fk() -> Any:
    """The owning run: first column of a child table's composite primary key."""
    return Field(
        sa_column=Column(
            "run_pk",
            Integer,
            ForeignKey("run.pk", ondelete="CASCADE"),
            primary_key=True,
            autoincrement=False,
        )
    )


class Project(SQLModel, table=True):
    """A W&B project (``entity/name``) known to the store."""

    __table_args__ = (UniqueConstraint("entity", "name"),)

    pk: int | None = Field(default=None, primary_key=True)
    entity: str
    name: str
    upstream_id: str | None = None  # GraphQL node id
    internal_id: str | None = None  # Project.internalId, sent by deleteFiles(projectId)
    description: str | None = None
    created_at: str | None = None
    is_benchmark: bool = False
    read_only: bool = False
    run_count: int | None = None  # last runCount the server reported
    synced_at: float | None = None


class Sweep(SQLModel, table=True):
    """A sweep; runs link to it by ``(entity, project, sweep_name)``."""

    __table_args__ = (UniqueConstraint("entity", "project", "sweep_id"),)

    pk: int | None = Field(default=None, primary_key=True)
    entity: str
    project: str
    sweep_id: str  # Sweep.name: the short id users type
    upstream_id: str | None = None
    display_name: str | None = None
    method: str | None = None
    state: str | None = None
    description: str | None = None
    config: str | None = None  # the YAML text as the server sent it
    best_loss: float | None = None
    created_at: str | None = None
    updated_at: str | None = None
    run_count: int | None = None
    run_count_expected: int | None = None
    synced_at: float | None = None


class Run(SQLModel, table=True):
    """One run, as upstream last showed it (or as imported/logged locally)."""

    __table_args__ = (
        UniqueConstraint("entity", "project", "run_id"),
        Index("ix_run_entity_project_created_at", "entity", "project", "created_at"),
        Index("ix_run_entity_project_heartbeat_at", "entity", "project", "heartbeat_at"),
        Index("ix_run_entity_project_sweep_name", "entity", "project", "sweep_name"),
        # A project's live runs without reading run rows (big: config and summary text),
        # so a filter answered from run_value never touches them (migration 0003).
        Index("ix_run_entity_project_tombstoned", "entity", "project", "tombstoned"),
    )

    pk: int | None = Field(default=None, primary_key=True)
    entity: str
    project: str
    run_id: str  # Run.name: the 8-char id in URLs
    storage_id: str | None = None  # Run.id: opaque node id upsertBucket(input.id) takes
    project_pk: int | None = Field(default=None, foreign_key="project.pk", ondelete="SET NULL")
    display_name: str | None = None
    state: str | None = None
    config: Any = _json()  # wrapped {"k": {"value": v, "desc": d}, "_wandb": ...}
    summary: Any = _json()
    system_metrics: Any = _json()
    tags: Any = _json()  # list[str]
    notes: str | None = None
    description: str | None = None
    group_name: str | None = None
    job_type: str | None = None
    commit: str | None = None
    host: str | None = None
    username: str | None = None
    user_name: str | None = None
    read_only: bool = False
    created_at: str | None = None  # server strings, as sent
    heartbeat_at: str | None = None
    updated_at: str | None = None
    history_line_count: int | None = Field(default=None, sa_type=BigInteger)
    events_line_count: int | None = Field(default=None, sa_type=BigInteger)
    file_count: int | None = None
    last_step: int | None = Field(default=None, sa_type=BigInteger)  # historyKeys.lastStep
    history_keys: Any = _json()  # {"lastStep": n, "keys": {...}} as the server sent it
    sweep_name: str | None = None
    source: str = Field(default="wandb")  # one of RUN_SOURCES
    tombstoned: bool = False  # deleted upstream; data kept, never silently dropped
    tombstoned_at: float | None = None
    synced_at: float | None = None  # local time of the last pull that touched this row
    # Fingerprint of the lightweight listing (state, heartbeat, counts) at the last pull,
    # so anti-entropy can tell which runs changed without refetching them.
    listing_hash: str | None = None


class HistoryRow(SQLModel, table=True):
    """One full history row (``_step``, ``_runtime``, ``_timestamp`` and metrics)."""

    __tablename__ = "history"

    run_pk: int = _run_fk()
    step: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    row: Any = _json(nullable=False)

    __table_args__ = ({"sqlite_with_rowid": False},)


class RunValue(SQLModel, table=True):
    """A run's top-level config/summary value, typed and indexed for filters and orders.

    Derived data (:mod:`mirror.store.run_values` says what a row holds and why), rewritten
    with the run in the same transaction; never edited on its own.
    """

    __tablename__ = "run_value"
    __table_args__ = (
        Index("ix_run_value_doc_key_num", "doc", "key", "num"),
        Index("ix_run_value_doc_key_text", "doc", "key", "text"),
        {"sqlite_with_rowid": False},
    )

    run_pk: int = _run_fk()
    doc: str = Field(primary_key=True)  # "config" | "summary"
    key: str = Field(primary_key=True)
    kind: str  # one of jsonpath.JSON_KINDS
    # NUMERIC: integers stay exact 64-bit integers, floats stay floats.
    num: float | None = Field(default=None, sa_type=Numeric(asdecimal=False))
    text: str | None = None


for _ddl in run_values.TRIGGER_DDL:
    event.listen(
        RunValue.__table__,  # type: ignore[attr-defined]
        "after_create",
        DDL(_ddl).execute_if(dialect="sqlite"),
    )


def _write_run_values(connection: Connection, run: Run, *, replace: bool) -> None:
    """Rewrite ``run_value`` rows of the documents this flush wrote (same transaction)."""
    state = inspect(run)
    write_run_values(connection, [
        (run.pk or 0, doc, getattr(run, doc)) for doc in run_values.DOCS
        if not replace or state.attrs[doc].history.has_changes()
    ], replace=replace)


_RUN_VALUE_COLUMNS = ("run_pk", "doc", "key", "kind", "num", "text")


def write_run_values(connection: Connection, docs: list[tuple[int, str, Any]], *,
                     replace: bool) -> None:
    """Write the ``run_value`` rows of ``(run pk, doc name, document)`` triples, first
    deleting the old rows of those documents if ``replace``.

    The rows go in one multi-row statement (:mod:`mirror.store.bulk`): a sync saves runs
    while its other threads parse and download, and ``executemany`` made it queue for
    the GIL after every key of every run. Used by the ORM events below and by
    :func:`mirror.store.runs.save_runs`, which writes runs without the ORM.
    """
    table = RunValue.__table__  # type: ignore[attr-defined]
    if replace:
        for doc in {d for _, d, _ in docs}:
            pks = [pk for pk, d, _ in docs if d == doc]
            connection.execute(table.delete().where(table.c.run_pk.in_(pks),
                                                    table.c.doc == doc))
    rows = [row for pk, doc, value in docs for row in run_values.rows_for(pk, doc, value)]
    bulk.insert_rows(connection, "run_value", _RUN_VALUE_COLUMNS, rows)


@event.listens_for(Run, "after_insert")
def _run_inserted(_mapper: Mapper[Run], connection: Connection, run: Run) -> None:
    _write_run_values(connection, run, replace=False)


@event.listens_for(Run, "after_update")
def _run_updated(_mapper: Mapper[Run], connection: Connection, run: Run) -> None:
    _write_run_values(connection, run, replace=True)


class Event(SQLModel, table=True):
    """One system-metrics row (``stream="events"``), keyed by its position ``seq``."""

    __tablename__ = "event"
    __table_args__ = ({"sqlite_with_rowid": False},)

    run_pk: int = _run_fk()
    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    row: Any = _json(nullable=False)


class Blob(SQLModel, table=True):
    """A verified file in the content-addressed cache (``blobs/ab/cdef...``)."""

    hash: str = Field(primary_key=True)  # sha256 hex of the bytes
    size: int = Field(sa_type=BigInteger)
    md5: str  # base64 of the raw md5 digest, as W&B reports it
    created_at: float


class RunFile(SQLModel, table=True):
    """A file of a run, as the server listed it; ``blob_hash`` once it is cached."""

    __tablename__ = "run_file"

    run_pk: int = _run_fk()
    name: str = Field(primary_key=True)
    upstream_id: str | None = None  # File.id, needed by deleteFiles
    size_bytes: int | None = Field(default=None, sa_type=BigInteger)
    md5: str | None = None
    mimetype: str | None = None
    updated_at: str | None = None
    url: str | None = None
    direct_url: str | None = None
    blob_hash: str | None = Field(
        default=None, foreign_key="blob.hash", ondelete="SET NULL", index=True
    )
    tombstoned: bool = False  # gone upstream; the cached blob stays


class SyncCursor(SQLModel, table=True):
    """Where an incremental stream stopped, committed with the rows it covers."""

    __tablename__ = "sync_cursor"

    base_url: str = Field(primary_key=True)
    entity: str = Field(primary_key=True)
    project: str = Field(primary_key=True)
    stream: str = Field(primary_key=True)  # e.g. "runs.heartbeat_at", "runs.full"
    value: Any = _json()
    updated_at: float


class OutboxOp(SQLModel, table=True):
    """A local edit waiting to be replayed upstream.

    ``payload`` holds per-key new values (a deleted key maps to a marker), ``base`` the
    values they replaced when the edit was made, for the 3-way merge at replay.
    """

    __tablename__ = "outbox_op"
    __table_args__ = (Index("ix_outbox_op_state_next_attempt_at", "state", "next_attempt_at"),)

    id: int | None = Field(default=None, primary_key=True)
    run_pk: int = Field(foreign_key="run.pk", ondelete="CASCADE", index=True)
    kind: str  # summary | config | meta | tags | file_put | file_delete | create_run
    payload: Any = _json(nullable=False)
    base: Any = _json()
    state: str = Field(default="pending")  # one of OUTBOX_STATES
    attempts: int = 0
    next_attempt_at: float | None = None
    last_error: str | None = None
    idempotency_key: str | None = None
    created_at: float
    updated_at: float | None = None


class Conflict(SQLModel, table=True):
    """A key changed both locally and upstream since the edit's base; parked for the user."""

    id: int | None = Field(default=None, primary_key=True)
    op_id: int | None = Field(default=None, foreign_key="outbox_op.id", ondelete="SET NULL")
    run_pk: int = Field(foreign_key="run.pk", ondelete="CASCADE", index=True)
    kind: str
    key: str
    base: Any = _json()
    local: Any = _json()
    remote: Any = _json()
    created_at: float
    resolved_at: float | None = None
    resolution: str | None = None  # local | remote | manual


class ImportMap(SQLModel, table=True):
    """Which local run a run of another system (MLflow, offline wandb) became."""

    __tablename__ = "import_map"

    source_system: str = Field(primary_key=True)  # "mlflow" | "wandb-offline"
    source_uri: str = Field(primary_key=True)  # tracking URI / folder
    source_run_id: str = Field(primary_key=True)
    run_pk: int = Field(foreign_key="run.pk", ondelete="CASCADE", index=True)
    fingerprint: str | None = None  # of the source state, to report "unchanged"
    imported_at: float


TABLES = [Project, Sweep, Run, RunValue, HistoryRow, Event, Blob, RunFile, SyncCursor, OutboxOp,
          Conflict, ImportMap]

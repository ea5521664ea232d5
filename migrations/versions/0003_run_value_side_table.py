"""run_value: top-level config/summary values of each run, typed and indexed

Why: filters and orders on ``config.<key>`` / ``summary_metrics.<key>`` had to parse every
run's whole config and summary JSON in every query; on 10,000 runs that cost as much as
loading them all into Python. The side table turns such a predicate into an index range
scan (see mirror/store/run_values.py). Existing runs are backfilled here. An index on
``run (entity, project, tombstoned)`` lists a project's live runs without reading the
(big) run rows. On SQLite two
triggers drop a document's rows when something outside the store rewrites it.

A later revision that rebuilds the ``run`` table (batch mode on SQLite) drops its
triggers with it and must create them again (``run_values.TRIGGER_DDL``).

Revision ID: 0003_run_value
Revises: 0002_blob_index
Create Date: 2026-11-27 22:10:00

"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel  # noqa: F401 - autogenerate renders sqlmodel.sql.sqltypes.AutoString
from alembic import op

revision: str = "0003_run_value"
down_revision: str | None = "0002_blob_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_RUNS = 500  # runs per backfill batch (bounded memory on big stores)


def upgrade() -> None:
    from mirror.store import codec, run_values

    op.create_table(
        "run_value",
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("doc", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("num", sa.Numeric(asdecimal=False), nullable=True),
        sa.Column("text", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.ForeignKeyConstraint(["run_pk"], ["run.pk"], name=op.f("fk_run_value_run_pk_run"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_pk", "doc", "key", name=op.f("pk_run_value")),
        sqlite_with_rowid=False,
    )
    with op.batch_alter_table("run_value", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_run_value_doc_key_num"), ["doc", "key", "num"],
                              unique=False)
        batch_op.create_index(batch_op.f("ix_run_value_doc_key_text"), ["doc", "key", "text"],
                              unique=False)
    # Not batch mode: a plain CREATE INDEX, which keeps the run table (and its triggers).
    op.create_index(op.f("ix_run_entity_project_tombstoned"), "run",
                    ["entity", "project", "tombstoned"], unique=False)
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for ddl in run_values.TRIGGER_DDL:
            op.execute(ddl)

    # Backfill from the stored text; a document that does not decode gets no rows (it
    # reads as missing, as the JSON path functions read it).
    table = sa.table("run_value", *(sa.column(c) for c in
                                    ("run_pk", "doc", "key", "kind", "num", "text")))
    select = sa.text("SELECT pk, config, summary FROM run WHERE pk > :after ORDER BY pk "
                     "LIMIT :limit")
    after = -1
    while True:
        runs = bind.execute(select, {"after": after, "limit": _RUNS}).fetchall()
        if not runs:
            break
        pending: list[dict[str, object]] = []
        for pk, *texts in runs:
            for doc, text in zip(run_values.DOCS, texts, strict=True):
                if text is None:
                    continue
                try:
                    value = codec.loads(text)
                except (ValueError, RecursionError):
                    continue
                pending.extend(run_values.rows_for(int(pk), doc, value))
        if pending:
            bind.execute(table.insert(), pending)
        after = int(runs[-1][0])

def downgrade() -> None:
    op.drop_index(op.f("ix_run_entity_project_tombstoned"), table_name="run")
    if op.get_bind().dialect.name == "sqlite":
        for doc in ("config", "summary"):
            op.execute(f"DROP TRIGGER IF EXISTS run_value_stale_{doc}")
    with op.batch_alter_table("run_value", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_value_doc_key_text"))
        batch_op.drop_index(batch_op.f("ix_run_value_doc_key_num"))
    op.drop_table("run_value")

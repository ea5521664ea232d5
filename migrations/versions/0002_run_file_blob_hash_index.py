"""index run_file.blob_hash

Why: the blob cache needs "which files point at this blob?" for garbage collection and
for re-linking a verified download to every file with the same content; without an index
that is a scan of every run file.

Revision ID: 0002_blob_index
Revises: 0001_initial
Create Date: 2026-11-27 19:00:00

"""
from collections.abc import Sequence

from alembic import op

revision: str = "0002_blob_index"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("run_file", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_run_file_blob_hash"), ["blob_hash"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("run_file", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_file_blob_hash"))

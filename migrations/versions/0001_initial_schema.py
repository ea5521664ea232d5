"""initial schema: the whole data model of the store

Why: the first revision of wandb-mirror. It also stamps the SQLite header with our
application_id, which is how an opened file is told apart from another program's database.

Revision ID: 0001_initial
Revises: 
Create Date: 2026-11-27 18:40:22.339713

"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel  # noqa: F401 - autogenerate renders sqlmodel.sql.sqltypes.AutoString
from alembic import op

revision: str = '0001_initial'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


APPLICATION_ID = 0x57424D52  # "WBMR"; mirror.store.migrate.APPLICATION_ID


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    op.create_table('blob',
    sa.Column('hash', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('md5', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('hash', name=op.f('pk_blob'))
    )
    op.create_table('project',
    sa.Column('pk', sa.Integer(), nullable=False),
    sa.Column('entity', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('upstream_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('internal_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('description', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('is_benchmark', sa.Boolean(), nullable=False),
    sa.Column('read_only', sa.Boolean(), nullable=False),
    sa.Column('run_count', sa.Integer(), nullable=True),
    sa.Column('synced_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_project')),
    sa.UniqueConstraint('entity', 'name', name=op.f('uq_project_entity_name'))
    )
    op.create_table('sweep',
    sa.Column('pk', sa.Integer(), nullable=False),
    sa.Column('entity', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('project', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('sweep_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('upstream_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('display_name', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('method', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('description', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('config', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('best_loss', sa.Float(), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('run_count', sa.Integer(), nullable=True),
    sa.Column('run_count_expected', sa.Integer(), nullable=True),
    sa.Column('synced_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_sweep')),
    sa.UniqueConstraint('entity', 'project', 'sweep_id', name=op.f('uq_sweep_entity_project_sweep_id'))
    )
    op.create_table('sync_cursor',
    sa.Column('base_url', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('entity', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('project', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('stream', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('value', sa.Text(), nullable=True),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('base_url', 'entity', 'project', 'stream', name=op.f('pk_sync_cursor'))
    )
    op.create_table('run',
    sa.Column('pk', sa.Integer(), nullable=False),
    sa.Column('entity', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('project', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('run_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('storage_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('project_pk', sa.Integer(), nullable=True),
    sa.Column('display_name', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('config', sa.Text(), nullable=True),
    sa.Column('summary', sa.Text(), nullable=True),
    sa.Column('system_metrics', sa.Text(), nullable=True),
    sa.Column('tags', sa.Text(), nullable=True),
    sa.Column('notes', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('description', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('group_name', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('job_type', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('commit', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('host', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('username', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('user_name', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('read_only', sa.Boolean(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('heartbeat_at', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('history_line_count', sa.BigInteger(), nullable=True),
    sa.Column('events_line_count', sa.BigInteger(), nullable=True),
    sa.Column('file_count', sa.Integer(), nullable=True),
    sa.Column('last_step', sa.BigInteger(), nullable=True),
    sa.Column('history_keys', sa.Text(), nullable=True),
    sa.Column('sweep_name', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('tombstoned', sa.Boolean(), nullable=False),
    sa.Column('tombstoned_at', sa.Float(), nullable=True),
    sa.Column('synced_at', sa.Float(), nullable=True),
    sa.Column('listing_hash', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.ForeignKeyConstraint(['project_pk'], ['project.pk'], name=op.f('fk_run_project_pk_project'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_run')),
    sa.UniqueConstraint('entity', 'project', 'run_id', name=op.f('uq_run_entity_project_run_id'))
    )
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.create_index('ix_run_entity_project_created_at', ['entity', 'project', 'created_at'], unique=False)
        batch_op.create_index('ix_run_entity_project_heartbeat_at', ['entity', 'project', 'heartbeat_at'], unique=False)
        batch_op.create_index('ix_run_entity_project_sweep_name', ['entity', 'project', 'sweep_name'], unique=False)

    op.create_table('event',
    sa.Column('run_pk', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('row', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['run_pk'], ['run.pk'], name=op.f('fk_event_run_pk_run'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_pk', 'seq', name=op.f('pk_event')),
    sqlite_with_rowid=False
    )
    op.create_table('history',
    sa.Column('run_pk', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('step', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('row', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['run_pk'], ['run.pk'], name=op.f('fk_history_run_pk_run'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_pk', 'step', name=op.f('pk_history')),
    sqlite_with_rowid=False
    )
    op.create_table('import_map',
    sa.Column('source_system', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('source_uri', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('source_run_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('run_pk', sa.Integer(), nullable=False),
    sa.Column('fingerprint', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('imported_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['run_pk'], ['run.pk'], name=op.f('fk_import_map_run_pk_run'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('source_system', 'source_uri', 'source_run_id', name=op.f('pk_import_map'))
    )
    with op.batch_alter_table('import_map', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_import_map_run_pk'), ['run_pk'], unique=False)

    op.create_table('outbox_op',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_pk', sa.Integer(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('base', sa.Text(), nullable=True),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.Float(), nullable=True),
    sa.Column('last_error', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('idempotency_key', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['run_pk'], ['run.pk'], name=op.f('fk_outbox_op_run_pk_run'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox_op'))
    )
    with op.batch_alter_table('outbox_op', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_outbox_op_run_pk'), ['run_pk'], unique=False)
        batch_op.create_index('ix_outbox_op_state_next_attempt_at', ['state', 'next_attempt_at'], unique=False)

    op.create_table('run_file',
    sa.Column('run_pk', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('upstream_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('size_bytes', sa.BigInteger(), nullable=True),
    sa.Column('md5', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('mimetype', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('url', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('direct_url', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('blob_hash', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('tombstoned', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['blob_hash'], ['blob.hash'], name=op.f('fk_run_file_blob_hash_blob'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['run_pk'], ['run.pk'], name=op.f('fk_run_file_run_pk_run'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_pk', 'name', name=op.f('pk_run_file'))
    )
    op.create_table('conflict',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('op_id', sa.Integer(), nullable=True),
    sa.Column('run_pk', sa.Integer(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('base', sa.Text(), nullable=True),
    sa.Column('local', sa.Text(), nullable=True),
    sa.Column('remote', sa.Text(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('resolved_at', sa.Float(), nullable=True),
    sa.Column('resolution', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.ForeignKeyConstraint(['op_id'], ['outbox_op.id'], name=op.f('fk_conflict_op_id_outbox_op'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['run_pk'], ['run.pk'], name=op.f('fk_conflict_run_pk_run'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_conflict'))
    )
    with op.batch_alter_table('conflict', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_conflict_run_pk'), ['run_pk'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('conflict', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_conflict_run_pk'))

    op.drop_table('conflict')
    op.drop_table('run_file')
    with op.batch_alter_table('outbox_op', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_op_state_next_attempt_at')
        batch_op.drop_index(batch_op.f('ix_outbox_op_run_pk'))

    op.drop_table('outbox_op')
    with op.batch_alter_table('import_map', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_import_map_run_pk'))

    op.drop_table('import_map')
    op.drop_table('history')
    op.drop_table('event')
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.drop_index('ix_run_entity_project_sweep_name')
        batch_op.drop_index('ix_run_entity_project_heartbeat_at')
        batch_op.drop_index('ix_run_entity_project_created_at')

    op.drop_table('run')
    op.drop_table('sync_cursor')
    op.drop_table('sweep')
    op.drop_table('project')
    op.drop_table('blob')

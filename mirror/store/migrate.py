"""Opening a store safely: identify the file, back it up, migrate it to head.

A store is a SQLite file whose header carries wandb-mirror's ``application_id`` and whose
``alembic_version`` names one of our revisions. Before anything writes to a file we
inspect it through a read-only connection, so that an empty file, a text file, random
bytes, another program's database (MLflow's, say) or a store written by a newer version of
wandb-mirror is refused with a clear message and left exactly as it was. A store behind
head is copied with SQLite's online backup API and then upgraded.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from mirror.errors import (
    NotAStoreError,
    SchemaOutOfDateError,
    SchemaTooNewError,
    StoreError,
)
from mirror.store.engine import make_engine, translated

# "WBMR" in the SQLite header (PRAGMA application_id), set by the initial revision.
APPLICATION_ID = 0x57424D52
SQLITE_HEADER = b"SQLite format 3\x00"
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


@lru_cache(maxsize=1)
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def alembic_config(url: str | None = None) -> Config:
    """An alembic Config pointing at our migrations (no alembic.ini needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    head = _script().get_current_head()
    if head is None:  # pragma: no cover - the project always ships a revision
        raise StoreError("no migrations found", hint=f"reinstall; looked in {MIGRATIONS_DIR}")
    return head


def known_revisions() -> set[str]:
    return {rev.revision for rev in _script().walk_revisions()}


@dataclass(frozen=True)
class FileState:
    """What a read-only look at a database file found."""

    exists: bool
    revision: str | None = None  # None: a new or blank file


def _connect_read_only(path: Path, *, wal: bool) -> sqlite3.Connection:
    """A connection that can neither change ``path`` nor create files next to it.

    ``mode=ro`` alone is not enough for a WAL-mode file: to read it, SQLite creates the
    ``-wal`` and ``-shm`` files, and a read-only connection cannot remove them again. When
    no ``-wal`` file exists no connection is using the database, so it is opened
    ``immutable`` (no locks, no side files); otherwise the side files exist already.
    """
    flags = "mode=ro"
    if wal and not path.with_name(path.name + "-wal").exists():
        flags += "&immutable=1"
    return sqlite3.connect(f"{path.resolve().as_uri()}?{flags}", uri=True)


def inspect_file(path: Path) -> FileState:
    """Identify ``path`` without modifying it; raise for anything that is not our store."""
    if not path.exists():
        return FileState(exists=False)
    if not path.is_file():
        raise NotAStoreError(f"{path} is not a file", path=str(path))
    size = path.stat().st_size
    if size == 0:
        raise NotAStoreError(
            f"{path} is an empty file, not a wandb-mirror store",
            path=str(path),
            hint="Delete the empty file to create a new store there, or choose another path. "
            "The file was not modified.",
        )
    with path.open("rb") as fh:
        header = fh.read(100)
    if header[: len(SQLITE_HEADER)] != SQLITE_HEADER:
        raise NotAStoreError(
            f"{path} is not a SQLite database (its first bytes are not a SQLite header)",
            path=str(path),
        )
    try:
        # Header bytes 18/19 are 2 in WAL mode (https://www.sqlite.org/fileformat.html).
        conn = _connect_read_only(path, wal=header[18:19] == b"\x02")
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            revision = None
            if "alembic_version" in tables:
                row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
                revision = row[0] if row else None
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise NotAStoreError(
            f"{path} is a corrupt SQLite file ({exc})",
            path=str(path),
            hint="Restore it from a backup (mirror.db.bak-*) or move it away and run "
            "`mirror sync` again. The file was not modified.",
        ) from None
    if app_id != APPLICATION_ID:
        if not tables:
            return FileState(exists=True)  # a blank SQLite file: safe to initialise
        looks_like = ""
        if {"experiments", "runs", "metrics"} <= tables:
            looks_like = " It looks like an MLflow tracking database; import it with " \
                f"`mirror import mlflow sqlite:///{path}`."
        raise NotAStoreError(
            f"{path} is another program's SQLite database, not a wandb-mirror store "
            f"(application_id={app_id}, {len(tables)} tables).{looks_like}",
            path=str(path),
        )
    if revision is not None and revision not in known_revisions():
        raise SchemaTooNewError(
            f"{path} was written by a newer wandb-mirror (schema revision {revision}; "
            f"this version knows up to {head_revision()})",
            path=str(path),
        )
    return FileState(exists=True, revision=revision)


def backup(path: Path, revision: str | None) -> Path:
    """Copy the store with SQLite's online backup API; returns the copy's path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = path.with_name(f"{path.name}.bak-{revision or 'base'}-{stamp}")
    n = 0
    while dest.exists():  # two upgrades within a second must not overwrite a backup
        n += 1
        dest = path.with_name(f"{path.name}.bak-{revision or 'base'}-{stamp}-{n}")
    src = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(dest)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()
    return dest


def upgrade(url: str, revision: str = "head") -> None:
    """Run alembic's upgrade on ``url`` (foreign keys off for batch rebuilds)."""
    from alembic import command

    engine = make_engine(url, foreign_keys=False)
    try:
        with translated(url), engine.begin() as conn:
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        engine.dispose()


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    engine = make_engine(url, foreign_keys=False)
    try:
        with translated(url), engine.begin() as conn:
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, revision)
    finally:
        engine.dispose()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@dataclass(frozen=True)
class Prepared:
    """The outcome of :func:`prepare`: what was done to bring the store to head."""

    created: bool = False
    upgraded_from: str | None = None
    backup_path: Path | None = None


def prepare(url: str, path: Path | None, *, allow_upgrade: bool = True) -> Prepared:
    """Make the database at ``url`` a store at head, or refuse without touching it."""
    head = head_revision()
    if path is None:  # not a SQLite file: trust alembic's version table
        engine = make_engine(url)
        try:
            with translated(url):
                rev = current_revision(engine)
        finally:
            engine.dispose()
        if rev is not None and rev not in known_revisions():
            raise SchemaTooNewError(f"the database at {url.split('@')[-1]} is newer ({rev})")
        if rev == head:
            return Prepared()
        if rev is not None and not allow_upgrade:
            raise SchemaOutOfDateError(f"the store is at revision {rev}, head is {head}")
        upgrade(url)
        return Prepared(created=rev is None, upgraded_from=rev)

    state = inspect_file(path)
    if state.revision == head:
        return Prepared()
    if state.revision is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        upgrade(url)
        return Prepared(created=True)
    if not allow_upgrade:
        raise SchemaOutOfDateError(
            f"{path} is at schema revision {state.revision}; this version needs {head}",
            path=str(path),
        )
    saved = backup(path, state.revision)
    upgrade(url)
    return Prepared(upgraded_from=state.revision, backup_path=saved)

"""The ``Store``: one opened database plus its blob folder.

Readers use :meth:`Store.session` (deferred transactions, many at once under WAL); writers
use :meth:`Store.transaction`, which begins ``IMMEDIATE`` and serialises writers inside
this process with a lock, so that sync, the outbox and the watcher never interleave
half-written transactions. Database exceptions leave as :mod:`mirror.errors` store errors.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, func, select
from sqlmodel import Session

from mirror.errors import StoreError
from mirror.settings import Settings, sqlite_path
from mirror.store.engine import make_engine, translated, writer
from mirror.store.migrate import Prepared, current_revision, head_revision, prepare
from mirror.store.models import TABLES


class Store:
    """An open wandb-mirror store. Create with :func:`open_store`."""

    def __init__(self, url: str, engine: Engine, prepared: Prepared | None = None) -> None:
        self.url = url
        self.engine = engine
        self.prepared = prepared or Prepared()
        self.path: Path | None = sqlite_path(url)
        self._writer = writer(engine)
        self._write_lock = threading.RLock()

    @property
    def blobs_dir(self) -> Path:
        base = self.path.parent if self.path else Path.cwd()
        return base / "blobs"

    @property
    def where(self) -> str:
        return str(self.path) if self.path else self.url.split("@")[-1]

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A read session (its transaction is rolled back at the end)."""
        with translated(self.where), Session(self.engine, expire_on_commit=False) as s:
            yield s

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """The one way to write: ``BEGIN IMMEDIATE``, commit on success, else roll back."""
        with (
            self._write_lock,
            translated(self.where),
            Session(self._writer, expire_on_commit=False) as s,
        ):
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def revision(self) -> str | None:
        with translated(self.where):
            return current_revision(self.engine)

    def counts(self) -> dict[str, int]:
        """Row count of every table, for `mirror db info`."""
        out: dict[str, int] = {}
        with self.session() as s:
            for table in TABLES:
                tbl = table.__table__  # type: ignore[attr-defined]
                out[tbl.name] = int(s.execute(select(func.count()).select_from(tbl)).scalar_one())
        return out

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.where!r})"


def open_store(
    target: Settings | str | Path, *, allow_upgrade: bool = True, create: bool = True
) -> Store:
    """Open (creating or upgrading as needed) the store of ``target``.

    ``target`` is a :class:`Settings`, a SQLAlchemy URL, or a path to a SQLite file.
    Refuses, without modifying anything, files that are not wandb-mirror stores or that a
    newer version wrote; upgrades older stores after a backup unless ``allow_upgrade`` is
    false.
    """
    if isinstance(target, Settings):
        url = target.db_url
    elif isinstance(target, Path) or "://" not in str(target):
        url = f"sqlite:///{Path(target).expanduser()}"
    else:
        url = str(target)
    path = sqlite_path(url)
    if path is not None and not create and not path.exists():
        raise StoreError(
            f"no store at {path}",
            path=str(path),
            hint="Run `mirror sync ENTITY/PROJECT` or `mirror db upgrade` to create one.",
        )
    prepared = prepare(url, path, allow_upgrade=allow_upgrade)
    store = Store(url, make_engine(url), prepared)
    rev = store.revision()
    if rev != head_revision():  # pragma: no cover - prepare() guarantees it
        raise StoreError(f"store at {store.where} is at {rev}, expected {head_revision()}")
    return store

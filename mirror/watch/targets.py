"""What to watch for an MLflow tracking URI, and how to notice another process's edits.

Both answer "did something change?" cheaply and without trusting events alone:

* :func:`mlflow_watch_target` maps a tracking URI to the file-system path whose changes
  mean "MLflow wrote something": the database file (and its journal/WAL) of a
  ``sqlite:///`` store, or the whole folder of a file store. Remote stores (``http(s)``,
  ``databricks``) have nothing to watch; the daemon's timer imports them.
* :class:`FileSignature` is the ``(mtime, size)`` of a few files; comparing two
  signatures tells whether any of them was written since. Applied to the store's database
  and its ``-wal`` file it detects a commit by any process (SQLite appends every commit
  to the WAL), which is how a CLI or notebook edit wakes the daemon's pusher within a
  second even where file events are unavailable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

__all__ = ["FileSignature", "MlflowWatchTarget", "mlflow_watch_target", "store_files"]


@dataclass(frozen=True)
class MlflowWatchTarget:
    """Watch ``path`` (a folder; recursively or not) for changes to ``names`` (None: all)."""

    path: Path
    recursive: bool
    names: frozenset[str] | None
    kind: str  # "sqlite" | "file"


def mlflow_watch_target(uri: str) -> MlflowWatchTarget | None:
    """The folder to watch for the MLflow store at ``uri`` (None: not a local store)."""
    if uri == "databricks" or uri.startswith(("databricks:", "databricks-uc")):
        return None  # a remote store MLflow spells without "://"
    if uri.startswith("sqlite:"):
        parsed = uri.split("?", 1)[0]
        _, _, rest = parsed.partition(":///")
        if not rest or rest == ":memory:":
            return None
        db = Path(unquote(rest)).expanduser()
        if not db.is_absolute() and not rest.startswith("/"):
            db = Path.cwd() / db
        names = frozenset({db.name, f"{db.name}-wal", f"{db.name}-journal"})
        return MlflowWatchTarget(db.parent, False, names, "sqlite")
    parsed_url = urlparse(uri)
    if parsed_url.scheme == "file":
        folder = Path(unquote(parsed_url.path or parsed_url.netloc)).expanduser()
        return MlflowWatchTarget(folder.resolve(), True, None, "file")
    if parsed_url.scheme in ("", None) or (len(parsed_url.scheme) == 1 and os.name == "nt"):
        return MlflowWatchTarget(Path(uri).expanduser().resolve(), True, None, "file")
    return None


def store_files(db_path: Path) -> tuple[Path, Path]:
    """The database and its write-ahead log: every commit by any process touches one."""
    return db_path, db_path.with_name(db_path.name + "-wal")


@dataclass(frozen=True)
class FileSignature:
    """``(mtime_ns, size)`` of each file (``None`` for a missing one)."""

    parts: tuple[tuple[int, int] | None, ...]

    @classmethod
    def of(cls, paths: tuple[Path, ...]) -> FileSignature:
        out: list[tuple[int, int] | None] = []
        for p in paths:
            try:
                st = p.stat()
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return cls(tuple(out))

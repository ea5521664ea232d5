"""Opening a file as a store: refuse what is not ours without touching it, create the rest.

A user who points ``--store`` at the wrong file (their MLflow database, a text file, a
store written by a newer wandb-mirror) must get a typed error naming the file and a hint,
and the file must be left byte-for-byte as it was, with no ``-wal``/``-shm``/``.bak``
files appearing next to it: a refusal that writes is not a refusal.
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlmodel import select

from mirror.errors import NotAStoreError, SchemaTooNewError, StoreError
from mirror.settings import Settings, sqlite_url
from mirror.store import APPLICATION_ID, head_revision, open_store
from mirror.store.migrate import Prepared
from mirror.store.models import Run

PAGE_SIZE = 4096


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _real_store(path: Path) -> None:
    """A store at head holding one run, closed (so no -wal/-shm remain)."""
    store = open_store(path)
    try:
        with store.transaction() as s:
            s.add(Run(entity="e", project="p", run_id="r1", summary={"loss": 0.25}))
    finally:
        store.close()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


# Each maker writes one kind of file that is not an openable store at ``path``.


def make_empty(path: Path) -> None:
    path.touch()


def make_text(path: Path) -> None:
    path.write_text("run_id,loss\nabc123,0.25\n" * 200, encoding="utf-8")


def make_random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(64 * 1024))


def make_mlflow_db(path: Path) -> None:
    """A real MLflow tracking database, written by MLflow's own client."""
    mlflow_tracking = pytest.importorskip("mlflow.tracking")
    client = mlflow_tracking.MlflowClient(tracking_uri=f"sqlite:///{path}")
    artifacts = (path.parent.parent / "mlflow-artifacts").as_uri()
    experiment_id = client.create_experiment("exp", artifact_location=artifacts)
    run = client.create_run(experiment_id)
    client.log_param(run.info.run_id, "lr", "0.01")
    client.log_metric(run.info.run_id, "loss", 0.25, step=1)
    client.set_terminated(run.info.run_id)


def make_other_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.execute("INSERT INTO notes (body) VALUES ('hello')")
        conn.commit()
    finally:
        conn.close()


def make_corrupt_store(path: Path) -> None:
    """A real store with its valid header intact and random bytes from page 2 on."""
    _real_store(path)
    data = bytearray(path.read_bytes())
    assert len(data) > 2 * PAGE_SIZE
    data[PAGE_SIZE:] = random.Random(0).randbytes(len(data) - PAGE_SIZE)
    path.write_bytes(bytes(data))


def make_truncated_store(path: Path) -> None:
    """A real store cut off in its second page, as a failed copy leaves it."""
    _real_store(path)
    path.write_bytes(path.read_bytes()[: PAGE_SIZE + PAGE_SIZE // 2])


def make_future_store(path: Path) -> None:
    """A real store stamped with a revision this code has never heard of."""
    _real_store(path)
    conn = sqlite3.connect(path)
    try:
        conn.execute("UPDATE alembic_version SET version_num = 'ffff_future'")
        conn.commit()
    finally:
        conn.close()


REFUSED: list[tuple[Callable[[Path], None], type[StoreError], str]] = [
    (make_empty, NotAStoreError, "empty"),
    (make_text, NotAStoreError, "not a SQLite database"),
    (make_random_bytes, NotAStoreError, "not a SQLite database"),
    (make_mlflow_db, NotAStoreError, "MLflow"),
    (make_other_sqlite, NotAStoreError, "another program's"),
    (make_corrupt_store, NotAStoreError, "corrupt"),
    (make_truncated_store, NotAStoreError, "corrupt"),
    (make_future_store, SchemaTooNewError, "ffff_future"),
]


@pytest.mark.parametrize(
    ("make", "error", "says"),
    REFUSED,
    ids=[m.__name__.removeprefix("make_") for m, _, _ in REFUSED],
)
def test_refuses_foreign_files_without_touching_them(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make: Callable[[Path], None],
    error: type[StoreError],
    says: str,
) -> None:
    monkeypatch.chdir(tmp_path)  # anything a library writes to the cwd stays in tmp_path
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "mirror.db"
    make(path)
    before = _sha256(path)
    listing = sorted(p.name for p in folder.iterdir())
    assert listing == ["mirror.db"]

    with pytest.raises(error) as info:
        open_store(path)

    err = info.value
    assert type(err) is error
    assert err.path == str(path)
    assert str(path) in err.message
    assert says in err.message
    assert err.hint.strip(), "every refusal must tell the user what to do"
    assert err.terminal
    assert _sha256(path) == before, "a refused file must not be modified"
    assert sorted(p.name for p in folder.iterdir()) == listing, (
        "no -wal/-shm/.bak file may appear next to a refused file"
    )


@pytest.mark.parametrize("make", [make_other_sqlite, make_future_store])
def test_refuses_foreign_files_in_folders_with_uri_characters(
    tmp_path: Path, make: Callable[[Path], None]
) -> None:
    """``#`` and ``%`` in a folder name must not redirect the read-only inspection.

    Pasted into a ``file:`` URI unquoted, ``/x/run #1/mirror.db`` names ``/x/run `` and the
    inspection sees an empty database, and the foreign file would then be migrated.
    """
    folder = tmp_path / "run #1 at 100%"
    folder.mkdir()
    path = folder / "mirror.db"
    make(path)
    before = _sha256(path)

    with pytest.raises((NotAStoreError, SchemaTooNewError)) as info:
        open_store(path)

    assert info.value.path == str(path)
    assert _sha256(path) == before
    assert sorted(p.name for p in folder.iterdir()) == ["mirror.db"]


def test_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(NotAStoreError) as info:
        open_store(tmp_path)
    assert str(tmp_path) in info.value.message
    assert info.value.hint


@pytest.mark.parametrize("form", ["path", "str", "url", "settings"])
def test_missing_path_creates_a_store_at_head(tmp_path: Path, form: str) -> None:
    path = tmp_path / "not" / "yet" / "mirror.db"
    targets: dict[str, Path | str | Settings] = {
        "path": path,
        "str": str(path),
        "url": sqlite_url(path),
        "settings": Settings(home=tmp_path, db_url=sqlite_url(path)),
    }
    target = targets[form]

    store = open_store(target)
    try:
        assert store.path == path
        assert store.prepared == Prepared(created=True)
        assert store.revision() == head_revision()
        assert set(store.counts().values()) == {0}
    finally:
        store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    assert sorted(p.name for p in path.parent.iterdir()) == ["mirror.db"]


def test_missing_path_with_create_false_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mirror.db"
    with pytest.raises(StoreError) as info:
        open_store(path, create=False)
    assert str(path) in info.value.message
    assert info.value.hint
    assert not path.exists()


def test_opening_twice_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "mirror.db"
    _real_store(path)
    before = _sha256(path)

    store = open_store(path)
    try:
        assert store.prepared == Prepared()
        assert store.revision() == head_revision()
        with store.session() as s:
            runs = s.exec(select(Run)).all()
        assert [(r.run_id, r.summary) for r in runs] == [("r1", {"loss": 0.25})]
    finally:
        store.close()

    assert _sha256(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mirror.db"], "no backup on reopen"


def test_blank_sqlite_file_is_initialised(tmp_path: Path) -> None:
    """A valid SQLite file without tables (e.g. made by `sqlite3 x.db`) becomes a store."""
    path = tmp_path / "mirror.db"
    conn = sqlite3.connect(path)
    try:
        conn.execute("CREATE TABLE scratch (x)")
        conn.execute("DROP TABLE scratch")
        conn.commit()
    finally:
        conn.close()
    assert path.stat().st_size > 0

    store = open_store(path)
    try:
        assert store.prepared.created
        assert store.prepared.backup_path is None
        assert store.revision() == head_revision()
        with store.transaction() as s:
            s.add(Run(entity="e", project="p", run_id="r1"))
        assert store.counts()["run"] == 1
    finally:
        store.close()

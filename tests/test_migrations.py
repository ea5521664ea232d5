"""Migrations == models == snapshot, and the paths that bring an old store to head.

Every test works on a real SQLite file in ``tmp_path``, migrated by alembic through
:mod:`mirror.store.migrate`, the same code that opens users' stores.
"""

from __future__ import annotations

import importlib.util
import sqlite3
from pathlib import Path
from types import ModuleType

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Integer, MetaData

from mirror.settings import sqlite_url
from mirror.store import APPLICATION_ID, head_revision, open_store
from mirror.store.engine import make_engine
from mirror.store.history import iter_history, save_history
from mirror.store.migrate import (
    FileState,
    alembic_config,
    backup,
    downgrade,
    inspect_file,
    known_revisions,
    upgrade,
)
from mirror.store.models import Run, metadata

REPO_ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = REPO_ROOT / "schema" / "mirror.sql"
DATA_TABLES = {t.name for t in metadata.sorted_tables}


def _load_dump_schema() -> ModuleType:
    """``scripts/dump_schema.py`` as a module (``scripts`` is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "dump_schema", REPO_ROOT / "scripts" / "dump_schema.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dump_schema = _load_dump_schema()


def _tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
    finally:
        conn.close()
    return {r[0] for r in rows}


def _diff_against(url: str, target: MetaData) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, target))
    finally:
        engine.dispose()


def _add_run(url: str, run_id: str, steps: int) -> int:
    store = open_store(url)
    try:
        with store.transaction() as s:
            run = Run(entity="e", project="p", run_id=run_id, summary={"loss": 0.5})
            s.add(run)
            s.flush()
            assert run.pk is not None
            save_history(s, run.pk, [{"_step": i, "loss": 1 / (i + 1)} for i in range(steps)])
            return run.pk
    finally:
        store.close()


# --- (a) migrations == models ------------------------------------------------------------


def test_migrated_schema_matches_models(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "m.db")
    upgrade(url)
    diff = _diff_against(url, metadata)
    assert diff == [], (
        "The migrations and mirror/store/models.py disagree. Add a revision in "
        "migrations/versions with `alembic revision --autogenerate -m '<what changed>'`, "
        "review it, then run `python scripts/dump_schema.py`. Differences:\n"
        + "\n".join(map(repr, diff))
    )


def test_model_comparison_detects_drift(tmp_path: Path) -> None:
    """The check above is not vacuous: a column missing from the migrations is reported."""
    url = sqlite_url(tmp_path / "m.db")
    upgrade(url)
    drifted = MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.sorted_tables:
        table.to_metadata(drifted)
    drifted.tables["history"].append_column(Column("extra", Integer, nullable=True))
    diff = _diff_against(url, drifted)
    assert [d[0] for d in diff] == ["add_column"]  # type: ignore[index]
    assert diff[0][3].name == "extra"  # type: ignore[index]


# --- (b) one head ------------------------------------------------------------------------


def test_exactly_one_head() -> None:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert len(heads) == 1, (
        f"migrations/versions has {len(heads)} heads {heads}: merge them with "
        "`alembic merge heads` so every store migrates along one line"
    )
    assert heads[0] == head_revision()


def test_revision_ids_fit_alembic_version_column() -> None:
    """alembic_version.version_num is VARCHAR(32); PostgreSQL would reject longer ids."""
    too_long = sorted(rev for rev in known_revisions() if len(rev) > 32)
    assert too_long == []


# --- (c) downgrade and upgrade again -------------------------------------------------------


def test_downgrade_to_base_and_upgrade_again(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    url = sqlite_url(path)
    _add_run(url, "r1", steps=3)
    assert _tables(path) == DATA_TABLES | {"alembic_version"}

    downgrade(url, "base")
    assert _tables(path) == {"alembic_version"}, "downgrade() must drop every data table"

    upgrade(url)
    assert _tables(path) == DATA_TABLES | {"alembic_version"}
    assert _diff_against(url, metadata) == []
    store = open_store(path)
    try:
        assert store.revision() == head_revision()
        assert store.counts() == dict.fromkeys(DATA_TABLES, 0), "old rows must not survive"
    finally:
        store.close()


# --- (d) snapshot ------------------------------------------------------------------------


def test_snapshot_matches_migrations() -> None:
    expected = dump_schema.head_schema()
    actual = SNAPSHOT.read_text(encoding="utf-8") if SNAPSHOT.exists() else ""
    assert actual == expected, (
        "schema/mirror.sql is not the DDL of the migrations at head. Run "
        "`python scripts/dump_schema.py` and commit the result.\n"
        + dump_schema.diff(expected, actual, SNAPSHOT)
    )


def test_snapshot_lists_every_table_and_application_id() -> None:
    text = SNAPSHOT.read_text(encoding="utf-8")
    assert "do not edit by hand" in text and "python scripts/dump_schema.py" in text
    assert f"PRAGMA application_id = {APPLICATION_ID};" in text
    for name in DATA_TABLES | {"alembic_version"}:
        assert f"CREATE TABLE {name} (" in text or f'CREATE TABLE "{name}" (' in text, name


def test_dump_schema_check_reports_a_stale_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "mirror.sql"
    stale.write_text(SNAPSHOT.read_text(encoding="utf-8").replace("CREATE INDEX", "CREATE IDX"))
    assert dump_schema.main(["--check", "--output", str(stale)]) == 1
    out = capsys.readouterr().out
    assert "-CREATE IDX ix_conflict_run_pk" in out
    assert "+CREATE INDEX ix_conflict_run_pk" in out
    assert "python scripts/dump_schema.py" in out

    assert dump_schema.main(["--output", str(stale)]) == 0
    assert dump_schema.main(["--check", "--output", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == SNAPSHOT.read_text(encoding="utf-8")


# --- (e) opening a store that is not at head -----------------------------------------------


def test_store_downgraded_to_base_is_reopened_at_head(tmp_path: Path) -> None:
    """A store whose tables were all dropped by ``downgrade base`` is re-created in place.

    The initial revision does not reset the header, so the file keeps our application_id
    and an empty ``alembic_version``; ``inspect_file`` sees an initialisable store.
    """
    path = tmp_path / "mirror.db"
    url = sqlite_url(path)
    _add_run(url, "r1", steps=2)
    downgrade(url, "base")

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 0
    finally:
        conn.close()
    assert inspect_file(path) == FileState(exists=True, revision=None)

    store = open_store(path)
    try:
        assert store.revision() == head_revision()
        assert store.prepared.created is True
        assert store.prepared.backup_path is None  # nothing to back up: no data tables
        assert _tables(path) == DATA_TABLES | {"alembic_version"}
    finally:
        store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mirror.db"]


def test_store_behind_head_is_backed_up_then_upgraded(tmp_path: Path) -> None:
    """The backup-then-upgrade path of ``prepare`` needs a revision between base and head."""
    script = ScriptDirectory.from_config(alembic_config())
    previous = script.get_revision(head_revision()).down_revision
    if previous is None or not isinstance(previous, str):
        pytest.skip(
            "only one revision exists: a store behind head cannot be built yet, so the "
            "backup-then-upgrade path of mirror.store.migrate.prepare is unexercised"
        )
    path = tmp_path / "mirror.db"
    upgrade(sqlite_url(path), previous)
    assert inspect_file(path) == FileState(exists=True, revision=previous)

    store = open_store(path)
    try:
        assert store.revision() == head_revision()
        assert store.prepared.upgraded_from == previous
        saved = store.prepared.backup_path
    finally:
        store.close()
    assert saved is not None and saved.exists()
    assert inspect_file(saved) == FileState(exists=True, revision=previous)


def test_allow_upgrade_false_opens_a_store_at_head(tmp_path: Path) -> None:
    """``allow_upgrade=False`` refuses upgrades only: a store at head opens as usual."""
    path = tmp_path / "mirror.db"
    open_store(path).close()
    store = open_store(path, allow_upgrade=False)
    try:
        assert store.revision() == head_revision()
        assert store.prepared.upgraded_from is None and store.prepared.backup_path is None
    finally:
        store.close()


# --- backup ------------------------------------------------------------------------------


def _dump_rows(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table, in a stable order."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return {
            name: sorted(conn.execute(f'SELECT * FROM "{name}"').fetchall(), key=repr)
            for name in sorted(DATA_TABLES | {"alembic_version"})
        }
    finally:
        conn.close()


def test_backup_is_a_valid_copy_with_the_same_rows(tmp_path: Path) -> None:
    path = tmp_path / "mirror.db"
    url = sqlite_url(path)
    run_pk = _add_run(url, "r1", steps=50)
    _add_run(url, "r2", steps=5)

    dest = backup(path, head_revision())

    assert dest.parent == path.parent
    assert dest.name.startswith(f"mirror.db.bak-{head_revision()}-")
    conn = sqlite3.connect(dest)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    finally:
        conn.close()
    original = _dump_rows(path)
    copy = _dump_rows(dest)
    assert copy == original
    assert len(copy["history"]) == 55 and len(copy["run"]) == 2

    # The copy is itself a store that opens at head with the same history.
    store = open_store(dest)
    try:
        assert store.prepared.backup_path is None
        with store.session() as s:
            rows = list(iter_history(s, run_pk))
        assert [r["_step"] for r in rows] == list(range(50))
        assert rows[49]["loss"] == 1 / 50
    finally:
        store.close()


def test_backup_of_a_base_store_is_named_base(tmp_path: Path) -> None:
    path = tmp_path / "mirror.db"
    upgrade(sqlite_url(path))
    dest = backup(path, None)
    assert dest.name.startswith("mirror.db.bak-base-")
    assert inspect_file(dest) == FileState(exists=True, revision=head_revision())


def test_upgrade_from_0002_backfills_run_values(tmp_path: Path) -> None:
    """0003 fills ``run_value`` from the runs a 0002 store already holds, exactly."""
    import json
    import math

    from sqlalchemy import select

    from mirror.store import codec
    from mirror.store.filters import compile_filters, compile_order

    path = tmp_path / "mirror.db"
    upgrade(sqlite_url(path), "0002_blob_index")
    docs = {
        "a": ({"lr": {"value": 0.1, "desc": None}, "opt": {"value": "adam"}, "raw": 3},
              {"loss": 0.5, "acc": math.nan, "big": 2**70, "inf": math.inf, "ok": True}),
        "b": ({"lr": {"value": 0.01}}, {"loss": 0.2, "acc": 0.9}),
        "c": (None, [1, 2]),  # no config; a summary that is not an object
    }
    conn = sqlite3.connect(path)
    with conn:
        for run_id, (config, summary) in docs.items():
            conn.execute(
                "INSERT INTO run (entity, project, run_id, config, summary, read_only, source,"
                " tombstoned) VALUES ('e', 'p', ?, ?, ?, 0, 'wandb', 0)",
                (run_id, None if config is None else codec.dumps(config), codec.dumps(summary)),
            )
        conn.execute("INSERT INTO run (entity, project, run_id, summary, read_only, source, "
                     "tombstoned) VALUES ('e', 'p', 'd', '{corrupt', 0, 'wandb', 0)")
    conn.close()

    store = open_store(path)
    try:
        assert store.revision() == head_revision()
        with store.session() as s:
            rows = s.execute(select(metadata.tables["run_value"])).all()
            got = {(r.run_pk, r.doc, r.key): (r.kind, r.num, r.text) for r in rows}
            pks = dict(s.execute(select(Run.__table__.c.run_id, Run.__table__.c.pk)).all())  # type: ignore[attr-defined]

            def ids(filters: dict[str, object], order: str | None = None) -> list[str]:
                table = Run.__table__  # type: ignore[attr-defined]
                stmt = select(table.c.run_id).where(compile_filters(filters))
                return list(s.execute(stmt.order_by(*compile_order(order))).scalars())

            assert ids({"config.lr": {"$gt": 0.05}}) == ["a"]
            assert ids({"summary_metrics.acc": None}, "+name") == ["a", "c", "d"]
            assert ids({"summary_metrics.big": {"$gt": 2**69}}) == ["a"]
            assert ids({}, "-summary_metrics.loss") == ["a", "b", "d", "c"]
    finally:
        store.close()
    a, b = pks["a"], pks["b"]
    assert got == {
        (a, "config", "lr"): ("number", 0.1, None),
        (a, "config", "opt"): ("string", None, "adam"),  # "raw" is not wrapped: no row
        (a, "summary", "loss"): ("number", 0.5, None),
        (a, "summary", "acc"): ("null", None, None),  # NaN reads as null
        (a, "summary", "big"): ("number", float(2**70), None),
        (a, "summary", "inf"): ("number", 1.7976931348623157e308, None),
        (a, "summary", "ok"): ("true", None, None),
        (b, "config", "lr"): ("number", 0.01, None),
        (b, "summary", "loss"): ("number", 0.2, None),
        (b, "summary", "acc"): ("number", 0.9, None),
    }, json.dumps(sorted(map(str, got.items())))


def test_writes_outside_the_store_invalidate_run_values(tmp_path: Path) -> None:
    """A raw UPDATE of a document drops its run_value rows (stale values never match)."""
    from mirror.records import RunRecord
    from mirror.store import runs as store_runs

    path = tmp_path / "mirror.db"
    store = open_store(path)
    try:
        with store.transaction() as s:
            pk = store_runs.save_run(s, RunRecord(entity="e", project="p", run_id="a",
                                                  config={"lr": {"value": 1}},
                                                  summary={"loss": 1}))
    finally:
        store.close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE run SET summary = '{\"loss\": 2}' WHERE pk = ?", (pk,))
    left = conn.execute("SELECT doc, \"key\" FROM run_value WHERE run_pk = ?", (pk,)).fetchall()
    conn.close()
    assert left == [("config", "lr")]

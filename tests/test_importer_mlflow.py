"""MLflow importer, phase 1: real MLflow stores (built with the real client) -> the store.

The store under test is built with the recipe of section 9 of
``../shared/reference/mlflow-importer.md`` (small sizes), once per module, on
``sqlite:///`` in a temp dir. Every item of the defect list (section 8) has a test here,
named ``test_defect_NN_...``; the upload half (what W&B's official client then sees) is in
``test_importer_mlflow_upload.py`` ("upload" below), which also runs a real ``mlflow
server`` on 127.0.0.1.

Section 8 item -> test(s):

  1 1005 runs in one experiment, all imported     test_defect_01_more_than_1000_runs_...
                                                   (slow), test_defect_01a_listing_...
  2 deleted runs / experiments: option + trace     test_defect_02_deleted_runs_and_...
  3 several values at one step all kept            test_defect_03_several_values_at_...
  4 rows in step order, _timestamp, _runtime       test_defect_04_history_rows_in_step_...
                                                   upload: test_import_with_upload_...
  5 NaN and +/-inf survive (numpy 2)               test_defect_05_nan_and_infinities_...
                                                   upload: test_real_mlflow_server_...
  6 created_at = MLflow start; runtime of RUNNING  test_defect_06_created_at_from_...
                                                   upload: check_upstream (startedAt);
                                                   xfail test_upstream_created_at_... (W&B's
                                                   UpsertBucketInput has no createdAt)
  7 status -> state (not all "finished")           test_defect_07_status_becomes_state
                                                   upload: test_import_with_upload_...
  8 mlflow.* tags: commit, user, program, parent   test_defect_08_system_tags_are_mapped
  9 short tags -> W&B tags, every tag lossless     test_defect_09_tags_short_ones_as_...
 10 entity = configured one, never the MLflow user test_defect_10_entity_is_the_...
 11 artifacts: paths, sizes, bytes, empty/unicode  test_defect_11_artifacts_keep_paths_...
    files, no artifact for none, MLflow 3 logged   test_defect_11b_same_named_runs_keep_...
    models, no collisions, no temp files left      fixture ``imported`` (temp dir empty)
 12 re-import idempotent, only changes refetched,  test_defect_12_reimport_is_idempotent_...
    409 deleted-upstream reported + remap          upload: test_importing_twice_sends_...,
                                                   test_a_run_deleted_upstream_is_...
 13 one failing run never aborts or hides others   test_defect_13_one_failing_run_never_...
 14 no process-global tracking URI                 test_defect_14_no_process_global_...
 15 sequential on sqlite, concurrent over HTTP     test_defect_15_histories_sequential_...
                                                   test_bulk_history_failures_fall_back_...
                                                   upload: test_real_mlflow_server_...
 16 documented constructor / collect / MlflowRun   test_defect_16_documented_api_forms
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mirror.errors import ConfigError
from mirror.importers import Namespace
from mirror.importers import mlflow_map as mm
from mirror.importers.mlflow import ImportReport, MlflowImporter, MlflowRun, RunReport
from mirror.settings import Settings, sqlite_url
from mirror.store import Store, blobs, history, imports, open_store
from mirror.store import runs as store_runs

mlflow = pytest.importorskip("mlflow")

T0 = 1_700_000_000_000
LONG_N = 1000
ENTITY = "alice"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


# --- the recipe (section 9), small -------------------------------------------------------


def build_recipe(uri: str, root: Path, *, long_n: int = LONG_N) -> dict[str, str]:
    """Build the edge-case store of section 9 at ``uri``; returns run name -> run id.

    Artifact roots are explicit folders under ``root`` (a ``sqlite:///`` store would
    otherwise write to ./mlruns of the working directory). Fluent calls need a global
    tracking URI: the test sets it and puts the old one back (the importer never does).
    """
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelOutput, Metric, Param

    ids: dict[str, str] = {}
    c = MlflowClient(uri)
    remote = uri.startswith("http")

    def exp(name: str, tags: dict[str, str] | None = None) -> str:
        e = c.get_experiment_by_name(name)
        if e:
            return str(e.experiment_id)
        loc = None if remote else str(root / "artifacts" / str(abs(hash(name))))
        return str(c.create_experiment(name, artifact_location=loc, tags=tags or {}))

    ea = exp("edge-cases", {"team": "ml"})
    eb = exp("second-exp ✓ ünïcode")
    ed = exp("to-be-deleted-exp")

    r = c.create_run(ea, start_time=T0, run_name="plain", tags={
        "mlflow.user": "alice", "mlflow.source.git.commit": COMMIT,
        "mlflow.source.name": "train.py", "mlflow.source.type": "LOCAL",
        "mlflow.source.git.repoURL": "https://example.com/repo.git",
        "mlflow.note.content": "a *markdown* note", "custom_tag": "v" * 5000,
        "team": "vision"})
    rid = ids["plain"] = r.info.run_id
    c.log_batch(rid, params=[Param("lr", "0.001"), Param("unicode", "日本語 ✓ émoji 🚀"),
                             Param("long", "x" * 5000), Param("none_like", "None")])
    c.log_batch(rid, metrics=[Metric("loss", 1.0 / (s + 1), T0 + s * 1000, s) for s in range(10)]
                + [Metric("acc", s / 10, T0 + s * 1000, s) for s in range(0, 10, 2)])
    c.set_terminated(rid, "FINISHED", end_time=T0 + 60_000)

    r = c.create_run(ea, start_time=T0, run_name="weird-metrics")
    rid = ids["weird-metrics"] = r.info.run_id
    c.log_batch(rid, metrics=[
        Metric("nan", float("nan"), T0, 0), Metric("inf", float("inf"), T0, 0),
        Metric("ninf", float("-inf"), T0, 0), Metric("big", 1e308, T0, 0),
        Metric("tiny", 5e-324, T0, 0), Metric("dup", 1.0, T0 + 1, 5),
        Metric("dup", 2.0, T0 + 2, 5), Metric("dup", 3.0, T0 + 2, 5),
        Metric("neg_step", 1.0, T0, -3), Metric("huge_step", 1.0, T0, 2**62),
        Metric("a/b.c d", 1.0, T0, 0)])
    c.log_metric(rid, "no_step", 0.5)  # step 0, timestamp = now, twice
    c.log_metric(rid, "no_step", 0.6)
    c.set_terminated(rid, "FINISHED")

    r = c.create_run(ea, start_time=T0, run_name="long-history")
    ids["long-history"] = r.info.run_id
    c.log_batch(r.info.run_id, metrics=[Metric("long", math.sin(i / 100), T0 + i, i)
                                        for i in range(long_n)])
    c.set_terminated(r.info.run_id, "FINISHED", end_time=T0 + long_n)

    old_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(experiment_id=ea, run_name="parent") as p:
            ids["parent"] = p.info.run_id
            mlflow.log_param("kind", "parent")
            with mlflow.start_run(experiment_id=ea, run_name="child1", nested=True) as ch:
                ids["child1"] = ch.info.run_id
                mlflow.log_metric("m", 1.0, step=1)
            with mlflow.start_run(experiment_id=ea, run_name="child2", nested=True) as ch:
                ids["child2"] = ch.info.run_id
                with mlflow.start_run(experiment_id=ea, run_name="grandchild",
                                      nested=True) as g:
                    ids["grandchild"] = g.info.run_id
                    mlflow.log_metric("m", 2.0, step=1)
            with mlflow.start_run(experiment_id=eb, run_name="child-in-other-exp",
                                  nested=True) as ch:
                ids["child-in-other-exp"] = ch.info.run_id
        with mlflow.start_run(experiment_id=eb, run_name="with-dataset") as dr:
            import numpy as np

            ids["with-dataset"] = dr.info.run_id
            mlflow.log_input(mlflow.data.from_numpy(np.arange(10).reshape(5, 2),
                                                    source="s3://bucket/train.npy",
                                                    name="train"), context="training")
    finally:
        mlflow.set_tracking_uri(old_uri)
    r = c.create_run(ea, run_name="client-child", tags={"mlflow.parentRunId": ids["parent"]})
    ids["client-child"] = r.info.run_id
    c.set_terminated(r.info.run_id, "FINISHED")

    for st in ("FAILED", "KILLED"):
        r = c.create_run(ea, start_time=T0, run_name=f"status-{st.lower()}")
        ids[f"status-{st.lower()}"] = r.info.run_id
        c.set_terminated(r.info.run_id, st, end_time=T0 + 5000)
    r = c.create_run(ea, start_time=T0, run_name="still-running")
    ids["still-running"] = r.info.run_id
    c.log_metric(r.info.run_id, "progress", 0.5, T0 + 7000, 1)
    r = c.create_run(ea, start_time=T0, run_name="scheduled")
    ids["scheduled"] = r.info.run_id
    c.update_run(r.info.run_id, status="SCHEDULED")

    r = c.create_run(ea, start_time=T0, run_name="deleted-run")
    ids["deleted-run"] = r.info.run_id
    c.log_metric(r.info.run_id, "x", 1.0, T0, 0)
    c.set_terminated(r.info.run_id, "FINISHED")
    c.delete_run(r.info.run_id)
    r = c.create_run(ed, start_time=T0, run_name="in-deleted-exp")
    ids["in-deleted-exp"] = r.info.run_id
    c.set_terminated(r.info.run_id, "FINISHED")
    c.delete_experiment(ed)

    with tempfile.TemporaryDirectory() as d:
        write_tree(Path(d))
        r = c.create_run(eb, start_time=T0, run_name="with-artifacts")
        ids["with-artifacts"] = r.info.run_id
        c.log_artifacts(r.info.run_id, d)
        c.log_artifact(r.info.run_id, f"{d}/root.txt", "models/m1")
        c.log_dict(r.info.run_id, {"cfg": [1, 2]}, "config/cfg.json")
        c.set_terminated(r.info.run_id, "FINISHED")

    r = c.create_run(eb, start_time=T0, run_name="wide")
    ids["wide"] = r.info.run_id
    c.log_batch(r.info.run_id, params=[Param(f"p{i}", str(i)) for i in range(200)])
    c.log_batch(r.info.run_id, metrics=[Metric(f"k{i}", i, T0, 0) for i in range(300)])
    c.set_terminated(r.info.run_id, "FINISHED")

    # MLflow 3 logged model (its files live outside the run's artifact tree), built with
    # the client API (pyfunc.log_model costs ~2.5 s for the same thing)
    r = c.create_run(eb, start_time=T0, run_name="with-logged-model")
    ids["with-logged-model"] = r.info.run_id
    model = c.create_logged_model(eb, name="model", source_run_id=r.info.run_id)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "MLmodel").write_text("flavors: {}\n")
        (Path(d) / "data").mkdir()
        (Path(d) / "data" / "weights.bin").write_bytes(bytes(range(256)))
        c.log_model_artifacts(model.model_id, d)
    c.finalize_logged_model(model.model_id, "READY")
    c.log_outputs(r.info.run_id, [LoggedModelOutput(model.model_id, 3)])
    c.set_terminated(r.info.run_id, "FINISHED")
    ids["logged-model-id"] = model.model_id
    return ids


TREE = {
    "root.txt": b"root",
    "a/one.json": json.dumps({"k": 1}).encode(),
    "a/b/c/deep.bin": bytes((i * 7) % 256 for i in range(4096)),
    "a/b/empty.txt": b"",
    "a/ünï.txt": b"u",
}


def write_tree(d: Path) -> None:
    for rel, data in TREE.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated MLflow sqlite database, copied by tests that need a fresh one
    (MLflow's migrations take ~1 s per new file)."""
    return make_mlflow_template(tmp_path_factory.mktemp("mlflow-template"))


def make_mlflow_template(where: Path) -> Path:
    """MLflow's own migrations on a new file, then a copy switched to WAL (a persistent
    file setting): the real client writes through it with one sync per commit instead of
    a rollback journal's several, which makes building 1,005 runs about twice as fast."""
    import sqlite3

    from mlflow import MlflowClient

    MlflowClient(f"sqlite:///{where / 'migrated.db'}").search_experiments()
    path = where / "empty.db"
    shutil.copy(where / "migrated.db", path)  # MLflow's engine may still hold the first
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    finally:
        conn.close()  # the last connection: no -wal file is left beside it
    return path


def fresh_mlflow(template: Path, where: Path) -> str:
    where.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, where / "mlflow.db")
    return f"sqlite:///{where / 'mlflow.db'}"


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path
           ) -> tuple[str, dict[str, str]]:
    root = tmp_path_factory.mktemp("recipe")
    uri = fresh_mlflow(mlflow_template, root)
    cwd = os.getcwd()
    os.chdir(root)  # fluent runs of a sqlite store may touch ./mlruns
    try:
        return uri, build_recipe(uri, root)
    finally:
        os.chdir(cwd)


def settings_for(path: Path, **kw: Any) -> Settings:
    return Settings(home=path.parent, db_url=sqlite_url(path), base_url="http://127.0.0.1:9",
                    api_key=None, entity=kw.pop("entity", ENTITY), **kw)


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory, recipe: tuple[str, dict[str, str]]
             ) -> Iterator[tuple[Store, ImportReport, dict[str, RunReport]]]:
    """The recipe imported once (deleted runs included), read by many tests."""
    uri, _ids = recipe
    tmp = tmp_path_factory.mktemp("mirror")
    tmpdir = tmp / "tmp"
    tmpdir.mkdir()
    old = tempfile.tempdir
    tempfile.tempdir = str(tmpdir)  # every temp dir the importer makes lands here
    try:
        store = open_store(tmp / "mirror.db")
        imp = MlflowImporter(mlflow_tracking_uri=uri, store=store,
                             settings=settings_for(tmp / "mirror.db"))
        report = imp.import_runs(imp.collect_runs(include_deleted=True), upload=False)
        imp.close()
    finally:
        tempfile.tempdir = old
    assert list(tmpdir.iterdir()) == [], "the importer left temp files behind"
    yield store, report, {r.run_name or r.mlflow_run_id: r for r in report}
    store.close()


def local(store: Store, report: RunReport) -> tuple[Any, list[dict[str, Any]], dict[str, bytes]]:
    """(run record, history rows, {file name: bytes}) of an imported run."""
    assert report.run_pk is not None, report
    with store.session() as s:
        rec = store_runs.get_run_by_pk(s, report.run_pk)
        rows = list(history.iter_history(s, report.run_pk))
        files = {f.name: blobs.read_blob(store, f.blob_hash)
                 for f in store_runs.list_files(s, report.run_pk) if f.blob_hash}
    return rec, rows, files


def mlflow_points(uri: str, run_id: str) -> dict[str, list[mm.Point]]:
    """The oracle: every point of every metric, straight from MLflow."""
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    out = {}
    for key in c.get_run(run_id).data.metrics:
        out[key] = sorted((mm.Point(m.step, m.timestamp, mm.restore_inf(m.value))
                           for m in c.get_metric_history(run_id, key)), key=_order)
    return out


def _order(p: mm.Point) -> tuple[Any, ...]:
    return (p.step, p.timestamp, math.isnan(p.value), 0 if math.isnan(p.value) else p.value)


def same_points(a: dict[str, list[mm.Point]], b: dict[str, list[mm.Point]]) -> bool:
    def canon(d: dict[str, list[mm.Point]]) -> dict[str, list[tuple[Any, ...]]]:
        return {k: sorted((p.step, p.timestamp, repr(p.value)) for p in v)
                for k, v in d.items()}
    return canon(a) == canon(b)


def stored_points(store: Store, report: RunReport) -> dict[str, list[mm.Point]]:
    _rec, rows, files = local(store, report)
    lines = files.get(mm.POINTS_FILE, b"").splitlines()
    return {k: [mm.Point(p.step, p.timestamp, p.value) for p in v]
            for k, v in mm.points_from_history(rows, lines).items()}


# --- section 8, item by item ---------------------------------------------------------------


def test_defect_01a_listing_follows_every_page_token(
    recipe: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    """The paging loop itself, fast: small pages over the recipe (the 1,005-run case with
    MLflow's default page of 1,000 is the slow test below)."""
    uri, ids = recipe
    db = tmp_path / "m.db"
    with MlflowImporter(mlflow_tracking_uri=uri, store=db, settings=settings_for(db)) as imp:
        exps = list(imp.source.iter_experiments(page_size=1))
        # one request per page: MLflow sends no token after the last full page
        assert len(exps) == 4 and imp.source.calls["search_experiments"] == 4
        runs = list(imp.source.iter_runs([e.experiment_id for e in exps], page_size=4))
    # every run, deleted ones and the deleted experiment's included (ViewType.ALL)
    assert sorted(r.info.run_id for r in runs) == sorted(
        v for k, v in ids.items() if k != "logged-model-id")
    assert imp.source.calls["search_runs"] == math.ceil(len(runs) / 4) > 1


@pytest.mark.slow  # ~1,000 real create_run calls; it cannot shrink below MLflow's cap
def test_defect_01_more_than_1000_runs_are_all_collected_and_imported(
    tmp_path: Path, mlflow_template: Path
) -> None:
    from mlflow import MlflowClient

    uri = fresh_mlflow(mlflow_template, tmp_path / "many")
    c = MlflowClient(uri)
    e = c.create_experiment("many-runs", artifact_location=str(tmp_path / "art"))
    for i in range(1005):
        c.create_run(e, start_time=T0 + i, run_name=f"r{i:05d}")
    with MlflowImporter(mlflow_tracking_uri=uri, store=tmp_path / "m.db",
                        settings=settings_for(tmp_path / "m.db")) as imp:
        runs = list(imp.collect_runs(experiment_ids=[e]))
        assert len(runs) == 1005
        assert len({r.run_id() for r in runs}) == 1005
        report = imp.import_runs(runs, artifacts=False, upload=False)
        assert report.counts() == {"imported": 1005}
        with imp.store.session() as s:
            assert len(imports.list_imports(s, "mlflow")) == 1005
        assert imp.source.calls["search_runs"] == 2  # 1000 + 5: paged, not capped


def test_defect_02_deleted_runs_and_experiments_are_never_dropped_silently(
    recipe: tuple[str, dict[str, str]], imported: Any, tmp_path: Path
) -> None:
    uri, ids = recipe
    store, _report, by_name = imported
    # included on request, with their lifecycle stage recorded
    for name in ("deleted-run", "in-deleted-exp"):
        rec, _rows, _files = local(store, by_name[name])
        section = rec.config["_mlflow"]["value"]
        assert "mlflow-deleted" in rec.tags or section["experiment_lifecycle_stage"] == "deleted"
    rec, _, _ = local(store, by_name["deleted-run"])
    assert rec.config["_mlflow"]["value"]["lifecycle_stage"] == "deleted"
    # excluded by default, but reported as skipped, with the reason
    with MlflowImporter(mlflow_tracking_uri=uri, store=tmp_path / "m.db",
                        settings=settings_for(tmp_path / "m.db")) as imp:
        report = imp.import_runs(imp.collect_runs(), artifacts=False, upload=False)
    skipped = {r.mlflow_run_id: r.reason for r in report if r.status == "skipped"}
    assert set(skipped) == {ids["deleted-run"], ids["in-deleted-exp"]}
    assert "deleted in MLflow" in skipped[ids["deleted-run"]]
    assert "experiment is deleted" in skipped[ids["in-deleted-exp"]]
    assert report.counts()["imported"] == len(by_name) - 2


def test_defect_03_several_values_at_one_step_are_all_kept(
    recipe: tuple[str, dict[str, str]], imported: Any
) -> None:
    uri, ids = recipe
    store, _report, by_name = imported
    rec, rows, files = local(store, by_name["weird-metrics"])
    row5 = next(r for r in rows if r[mm.MLFLOW_STEP] == 5)
    assert row5["dup"] == 3.0  # the projection: greatest (timestamp, value) = MLflow latest
    assert rec.summary["dup"] == 3.0
    lines = [json.loads(x) for x in files[mm.POINTS_FILE].splitlines()]
    dup = [(d["step"], d["timestamp"], d["value"]) for d in lines if d["key"] == "dup"]
    assert dup == [(5, T0 + 1, 1.0), (5, T0 + 2, 2.0), (5, T0 + 2, 3.0)]
    no_step = [d["value"] for d in lines if d["key"] == "no_step"]
    assert sorted(no_step) == [0.5, 0.6]
    # and nothing else: rows + points file give back exactly MLflow's points, every run
    for name, rep in by_name.items():
        if rep.status != "skipped":
            assert same_points(stored_points(store, rep), mlflow_points(uri, ids[name])), name


def test_defect_04_history_rows_in_step_order_with_timestamp_and_runtime(
    imported: Any,
) -> None:
    store, _report, by_name = imported
    _rec, rows, _ = local(store, by_name["plain"])
    assert [r["_step"] for r in rows] == list(range(10))
    for r in rows:
        assert r["_timestamp"] == (T0 + r["_step"] * 1000) / 1000
        assert r["_runtime"] == r["_step"] * 1.0
        assert r["loss"] == 1.0 / (r["_step"] + 1)
        assert ("acc" in r) == (r["_step"] % 2 == 0)  # uneven lengths, not truncated
    # negative and huge steps: W&B's scan (step windows from 0) could not read them, so
    # _step becomes the row index and the MLflow step is kept beside it
    _rec, rows, _ = local(store, by_name["weird-metrics"])
    assert [r["_step"] for r in rows] == [0, 1, 2, 3]
    assert [r[mm.MLFLOW_STEP] for r in rows] == [-3, 0, 5, 2**62]
    assert mm.needs_renumbering([0, 5, 10]) is False
    assert mm.needs_renumbering([-1, 0]) and mm.needs_renumbering([0, 1_700_000_000_000])
    _rec, rows, _ = local(store, by_name["long-history"])
    assert [r["_step"] for r in rows] == list(range(LONG_N))
    assert rows[-1]["_runtime"] == (LONG_N - 1) / 1000


def test_defect_05_nan_and_infinities_survive(imported: Any) -> None:
    store, _report, by_name = imported
    rec, rows, _ = local(store, by_name["weird-metrics"])
    row0 = next(r for r in rows if r[mm.MLFLOW_STEP] == 0)
    assert math.isnan(row0["nan"]) and math.isnan(rec.summary["nan"])
    assert row0["inf"] == math.inf and rec.summary["inf"] == math.inf  # SQL's DBL_MAX mapped
    assert row0["ninf"] == -math.inf and rec.summary["ninf"] == -math.inf
    assert row0["big"] == 1e308 and row0["tiny"] == 5e-324


def test_defect_06_created_at_from_start_time_and_runtime_of_open_runs(imported: Any) -> None:
    store, _report, by_name = imported
    rec, _rows, files = local(store, by_name["plain"])
    assert rec.created_at == "2023-11-14T22:13:20Z"  # T0, not 1970
    assert rec.summary["_runtime"] == 60.0
    assert json.loads(files[mm.METADATA_FILE])["startedAt"] == "2023-11-14T22:13:20.000000Z"
    rec, _rows, _ = local(store, by_name["still-running"])
    assert rec.state == "running" and rec.summary["_runtime"] == 7.0  # to its last metric


def test_defect_07_status_becomes_state(imported: Any) -> None:
    store, _report, by_name = imported
    expect = {"plain": "finished", "status-failed": "failed", "status-killed": "killed",
              "still-running": "running", "scheduled": "pending"}
    for name, state in expect.items():
        assert local(store, by_name[name])[0].state == state, name
    assert mm.exitcode_for("finished") == 0 and mm.exitcode_for("failed") == 1
    assert mm.exitcode_for("running") is None and mm.exitcode_for("pending") is None


def test_defect_08_system_tags_are_mapped(
    recipe: tuple[str, dict[str, str]], imported: Any
) -> None:
    _uri, ids = recipe
    store, _report, by_name = imported
    rec, _rows, files = local(store, by_name["plain"])
    assert rec.commit == COMMIT
    assert rec.username == "alice"
    assert rec.notes == "a *markdown* note"
    meta = json.loads(files[mm.METADATA_FILE])
    assert meta["program"] == "train.py"
    assert meta["git"] == {"commit": COMMIT, "remote": "https://example.com/repo.git"}
    section = rec.config["_mlflow"]["value"]
    assert section["tags"]["mlflow.source.type"] == "LOCAL"  # every tag kept
    # nesting: parent links and one group per tree (the root's W&B id)
    parent = local(store, by_name["parent"])[0]
    for child in ("child1", "child2", "client-child", "child-in-other-exp"):
        c = local(store, by_name[child])[0]
        assert c.config["_mlflow"]["value"]["parent_run_id"] == ids["parent"]
        assert c.config["_mlflow"]["value"]["parent_wandb_run_id"] == parent.run_id
        assert c.group_name == parent.run_id, child
    grand = local(store, by_name["grandchild"])[0]
    assert grand.config["_mlflow"]["value"]["parent_run_id"] == ids["child2"]
    assert grand.group_name == parent.run_id
    assert parent.group_name is None
    other = local(store, by_name["child-in-other-exp"])[0]
    assert other.project == "second-exp-unicode" and parent.project == "edge-cases"


def test_defect_09_tags_short_ones_as_wandb_tags_all_in_config(imported: Any) -> None:
    store, _report, by_name = imported
    rec, _rows, _ = local(store, by_name["plain"])
    assert rec.tags == ["team:vision"]  # custom_tag (5000 chars) does not fit W&B's 64
    assert rec.config["_mlflow"]["value"]["tags"]["custom_tag"] == "v" * 5000
    assert rec.config["unicode"] == {"value": "日本語 ✓ émoji 🚀"}
    assert rec.config["long"] == {"value": "x" * 5000}
    assert rec.config["none_like"] == {"value": "None"}  # params stay MLflow's strings
    assert rec.config["_wandb"]["value"]["t"]  # resumable by the SDK


def test_defect_10_entity_is_the_configured_one_never_the_mlflow_user(
    recipe: tuple[str, dict[str, str]], imported: Any, tmp_path: Path
) -> None:
    _store, report, _by_name = imported
    assert {r.path.split("/")[0] for r in report if r.path} == {ENTITY}
    uri, _ids = recipe
    # nothing configured and upload off: a clear error, not the MLflow user
    with MlflowImporter(mlflow_tracking_uri=uri, store=tmp_path / "m.db",
                        settings=settings_for(tmp_path / "m.db", entity=None)) as imp, \
            pytest.raises(ConfigError, match="no W&B entity"):
        imp.import_runs(imp.collect_runs(limit=1), upload=False)


def test_defect_11_artifacts_keep_paths_sizes_and_bytes(
    recipe: tuple[str, dict[str, str]], imported: Any
) -> None:
    store, _report, by_name = imported
    _rec, _rows, files = local(store, by_name["with-artifacts"])
    expect = {mm.ARTIFACTS_PREFIX + k: v for k, v in TREE.items()}
    expect[mm.ARTIFACTS_PREFIX + "models/m1/root.txt"] = b"root"
    expect[mm.ARTIFACTS_PREFIX + "config/cfg.json"] = json.dumps({"cfg": [1, 2]},
                                                                 indent=2).encode()
    got = {k: v for k, v in files.items() if k.startswith(mm.ARTIFACTS_PREFIX)}
    assert set(got) == set(expect)
    for name, data in expect.items():
        if name.endswith("cfg.json"):
            assert json.loads(got[name]) == {"cfg": [1, 2]}
        else:
            assert got[name] == data, name
    assert got[mm.ARTIFACTS_PREFIX + "a/b/empty.txt"] == b""
    # a run without artifacts gets no artifact files (only the metadata)
    _rec, _rows, files = local(store, by_name["plain"])
    assert not [k for k in files if k.startswith(mm.ARTIFACTS_PREFIX)]
    # MLflow 3 logged models, which live outside the run's artifact tree
    _uri, ids = recipe
    rec, _rows, files = local(store, by_name["with-logged-model"])
    prefix = f"{mm.MODELS_PREFIX}{ids['logged-model-id']}/"
    assert files[prefix + "MLmodel"] == b"flavors: {}\n"
    assert files[prefix + "data/weights.bin"] == bytes(range(256))
    models = rec.config["_mlflow"]["value"]["logged_models"]
    assert models[0]["model_id"] == ids["logged-model-id"] and models[0]["step"] == 3


def test_defect_11b_same_named_runs_keep_their_own_artifacts(
    tmp_path: Path, mlflow_template: Path
) -> None:
    """W&B's importer named the artifact after the display name: two runs called the same
    became versions of one another. Here files belong to their run."""
    from mlflow import MlflowClient

    uri = fresh_mlflow(mlflow_template, tmp_path / "ml")
    c = MlflowClient(uri)
    e = c.create_experiment("exp", artifact_location=str(tmp_path / "art"))
    rids = []
    for i in range(2):
        r = c.create_run(e, start_time=T0, run_name="same")
        c.log_text(r.info.run_id, f"output of run {i}", "out.txt")
        c.set_terminated(r.info.run_id, "FINISHED")
        rids.append(r.info.run_id)
    db = tmp_path / "m.db"
    with MlflowImporter(mlflow_tracking_uri=uri, store=db, settings=settings_for(db)) as imp:
        report = imp.import_runs(imp.collect_runs(), upload=False)
        by_id = {r.mlflow_run_id: r for r in report}
        assert len({r.path for r in report}) == 2
        for i, rid in enumerate(rids):
            _rec, _rows, files = local(imp.store, by_id[rid])
            assert files[mm.ARTIFACTS_PREFIX + "out.txt"] == f"output of run {i}".encode()


def test_defect_12_reimport_is_idempotent_and_updates_only_what_changed(
    tmp_path: Path, mlflow_template: Path
) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    uri = fresh_mlflow(mlflow_template, tmp_path / "ml")
    c = MlflowClient(uri)
    e = c.create_experiment("exp", artifact_location=str(tmp_path / "art"))
    rids = []
    for i in range(3):
        r = c.create_run(e, start_time=T0, run_name=f"r{i}")
        c.log_batch(r.info.run_id, metrics=[Metric(k, s * (i + 1), T0 + s, s)
                                            for k in ("a", "b", "c") for s in range(50)])
        c.set_terminated(r.info.run_id, "FINISHED", end_time=T0 + 100)
        rids.append(r.info.run_id)
    db = tmp_path / "m.db"
    with MlflowImporter(mlflow_tracking_uri=uri, store=db, settings=settings_for(db)) as imp:
        first = imp.import_runs(imp.collect_runs(), upload=False)
        assert first.counts() == {"imported": 3}
        before = snapshot(imp.store)
        calls = imp.source.total_calls
        again = imp.import_runs(imp.collect_runs(), upload=False)
        assert again.counts() == {"unchanged": 3}
        assert snapshot(imp.store) == before
        # listing only: 1 experiments page, 1 runs page, 1 artifact listing per run
        assert imp.source.total_calls - calls == 2 + 3 * 2

        # one run changes: a new point of one key, and a tag
        c.log_metric(rids[1], "b", 99.0, T0 + 500, 50)
        c.set_tag(rids[1], "reviewed", "yes")
        calls = dict(imp.source.calls)
        third = imp.import_runs(imp.collect_runs(), upload=False)
        status = {r.mlflow_run_id: r.status for r in third}
        assert status == {rids[0]: "unchanged", rids[1]: "updated", rids[2]: "unchanged"}
        assert imp.source.calls["get_metric_history"] - calls.get("get_metric_history", 0) == 1
        after = snapshot(imp.store)
        changed = {k for k in before if before[k] != after[k]}
        assert changed == {third.runs[[r.mlflow_run_id for r in third].index(rids[1])].path}
        rep = next(r for r in third if r.mlflow_run_id == rids[1])
        rec, rows, _ = local(imp.store, rep)
        assert rows[-1]["_step"] == 50 and rows[-1]["b"] == 99.0 and "reviewed:yes" in rec.tags
        assert same_points(stored_points(imp.store, rep), mlflow_points(uri, rids[1]))
        # the W&B id is a function of (tracking URI, run id): same id in a new store
        with MlflowImporter(mlflow_tracking_uri=uri, store=tmp_path / "other.db",
                            settings=settings_for(tmp_path / "other.db")) as imp2:
            paths = {r.path for r in imp2.import_runs(imp2.collect_runs(), upload=False)}
        assert paths == {r.path for r in first}


def snapshot(store: Store) -> dict[str, Any]:
    """Per run path: the run row, history and files (what an import writes)."""
    out: dict[str, Any] = {}
    with store.session() as s:
        for e in imports.list_imports(s, "mlflow"):
            rec = store_runs.get_run_by_pk(s, e.run_pk)
            assert rec is not None
            rows = list(history.iter_history(s, e.run_pk))
            files = [(f.name, f.md5, f.size_bytes) for f in store_runs.list_files(s, e.run_pk)]
            out[rec.path] = json.dumps([rec.config, rec.summary, rec.tags, rec.state, rows,
                                        files, e.fingerprint], sort_keys=True, default=str)
    return out


def test_defect_13_one_failing_run_never_aborts_the_others(
    recipe: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    uri, ids = recipe
    with MlflowImporter(mlflow_tracking_uri=uri, store=tmp_path / "m.db",
                        settings=settings_for(tmp_path / "m.db")) as imp:
        real = imp.source.metric_history

        def flaky(run_id: str, key: str) -> list[mm.Point]:
            if run_id == ids["plain"]:
                raise mlflow.exceptions.MlflowException("boom: history unavailable")
            return real(run_id, key)

        imp.source.metric_history = flaky  # type: ignore[method-assign]
        report = imp.import_runs(imp.collect_runs(), artifacts=False, upload=False)
    failed = [r for r in report if r.status == "failed"]
    assert [r.mlflow_run_id for r in failed] == [ids["plain"]]
    assert "boom" in (failed[0].reason or "") and not report.ok
    assert report.counts()["imported"] == len(report) - 3  # 2 skipped + 1 failed


def test_defect_14_no_process_global_tracking_uri(
    recipe: tuple[str, dict[str, str]], tmp_path: Path, mlflow_template: Path
) -> None:
    uri, _ids = recipe
    before = mlflow.get_tracking_uri()
    other = fresh_mlflow(mlflow_template, tmp_path / "other")
    from mlflow import MlflowClient

    MlflowClient(other).create_experiment("only-here",
                                          artifact_location=str(tmp_path / "a"))
    with MlflowImporter(mlflow_tracking_uri=uri, store=tmp_path / "a.db",
                        settings=settings_for(tmp_path / "a.db")) as a, \
            MlflowImporter(mlflow_tracking_uri=other, store=tmp_path / "b.db",
                           settings=settings_for(tmp_path / "b.db")) as b:
        names_a = {e.name for e in a.source.iter_experiments()}
        names_b = {e.name for e in b.source.iter_experiments()}
    assert "edge-cases" in names_a and "edge-cases" not in names_b and "only-here" in names_b
    assert mlflow.get_tracking_uri() == before


def test_defect_15_histories_sequential_on_local_stores_concurrent_over_http(
    recipe: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    import threading

    from mlflow import MlflowClient

    from mirror.importers.mlflow_read import MlflowSource

    assert MlflowSource("sqlite:////tmp/x.db").key_workers == 1
    assert MlflowSource("file:///tmp/mlruns").key_workers == 1
    assert MlflowSource("http://127.0.0.1:5000").key_workers == 8
    assert MlflowSource("databricks").remote
    # sqlite: the 300 keys of the wide run, one call each, in the importing thread
    uri, ids = recipe
    db = tmp_path / "m.db"
    with MlflowImporter(mlflow_tracking_uri=uri, store=db, settings=settings_for(db)) as imp:
        real = imp.source.metric_history
        threads: list[str] = []

        def recorded(run_id: str, key: str) -> list[mm.Point]:
            threads.append(threading.current_thread().name)
            return real(run_id, key)

        imp.source.metric_history = recorded  # type: ignore[method-assign]
        report = imp.import_runs([MlflowClient(uri).get_run(ids["wide"])], artifacts=False,
                                 upload=False)
    assert report.counts() == {"imported": 1}
    assert len(threads) == 300 and set(threads) == {threading.current_thread().name}
    # the HTTP path (bulk, and the bounded per-key pool) runs against a real
    # `mlflow server` in test_importer_mlflow_upload.py::test_real_mlflow_server_...


def test_bulk_history_failures_fall_back_per_key_and_only_a_missing_endpoint_is_final(
) -> None:
    """A transient bulk failure (a busy server) costs one window the per-key path; only a
    server without the endpoint turns bulk off. The real 404 and the real bulk path run
    against `mlflow server` in the upload module."""
    from mlflow.exceptions import MlflowException

    from mirror.importers.mlflow_read import MlflowSource

    source = MlflowSource("http://127.0.0.1:9")
    wants = [("r1", {"k": 10}), ("r2", {"k": 10})]

    def busy(key: str, run_ids: list[str]) -> list[dict[str, Any]]:
        raise MlflowException("bulk history: HTTP 503")

    source._bulk_request = busy  # type: ignore[method-assign]
    assert source.prefetch(wants) == 0
    assert source.bulk and "503" in (source.bulk_error or "")

    def answers(key: str, run_ids: list[str]) -> list[dict[str, Any]]:
        return [{"run_id": r, "key": key, "step": 0, "timestamp": 1, "value": 1.0}
                for r in run_ids]

    source._bulk_request = answers  # type: ignore[method-assign]
    assert source.prefetch(wants) == 2  # the next window uses bulk again

    def missing(key: str, run_ids: list[str]) -> list[dict[str, Any]]:
        source._bulk_unsupported = True
        raise MlflowException("bulk history: HTTP 404 (the server has no bulk endpoint)")

    source._bulk_request = missing  # type: ignore[method-assign]
    assert source.prefetch([("r3", {"k": 10})]) == 0 and not source.bulk
    source.close()


def test_bulk_windows_fetch_the_next_window_while_writing_this_one(
    mlflow_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows of runs are pipelined: the next window's bulk fetch runs in its own thread
    while this one is written, and every run still gets exactly its own points. The bulk
    answers come from the real MLflow store (the HTTP endpoint itself is tested against
    `mlflow server` in the upload module)."""
    import threading

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from mirror.importers import mlflow_read

    uri = fresh_mlflow(mlflow_template, tmp_path / "ml")
    c = MlflowClient(uri)
    e = c.create_experiment("windows")
    ids = []
    for i in range(7):
        r = c.create_run(e, start_time=T0, run_name=f"w{i}")
        c.log_batch(r.info.run_id, metrics=[Metric(f"k{k}", i + s / 8, T0 + s, s)
                                            for k in range(2) for s in range(5 + i)])
        ids.append(r.info.run_id)
    monkeypatch.setattr(mlflow_read, "BULK_WINDOW_RUNS", 2)
    db = tmp_path / "m.db"
    with MlflowImporter(mlflow_tracking_uri=uri, store=db, settings=settings_for(db)) as imp:
        imp.source.bulk = True  # as over HTTP: one request per key and window
        fetched: list[tuple[str, tuple[str, ...]]] = []

        def answer(key: str, run_ids: list[str]) -> list[dict[str, Any]]:
            fetched.append((threading.current_thread().name, tuple(run_ids)))
            return [{"run_id": rid, "key": key, "step": m.step, "timestamp": m.timestamp,
                     "value": m.value}
                    for rid in run_ids for m in c.get_metric_history(rid, key)]

        imp.source._bulk_request = answer  # type: ignore[method-assign]
        report = imp.import_runs(imp.collect_runs(), artifacts=False, upload=False)
        assert report.counts() == {"imported": 7}
        assert imp.source.calls["get_metric_history"] == 0, dict(imp.source.calls)
        assert len(fetched) == 8  # 4 windows (2, 2, 2, 1 runs) x 2 keys
        assert all(t.startswith("mirror-mlflow-keys") for t, _ in fetched)
        assert not imp.source._cache  # nothing prefetched is left behind
        for rep in report:
            assert same_points(stored_points(imp.store, rep),
                               mlflow_points(uri, rep.mlflow_run_id)), rep.run_name


def test_defect_16_documented_api_forms(
    recipe: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    uri, ids = recipe
    s = settings_for(tmp_path / "m.db")
    # W&B 0.16.4-0.27 positional form and the guide's keyword form
    MlflowImporter(None, None, uri, None, store=tmp_path / "m.db", settings=s).close()
    with pytest.raises(TypeError):
        MlflowImporter(store=tmp_path / "m.db", settings=s)
    assert Namespace.from_path("ent/proj") == Namespace("ent", "proj")
    assert Namespace.from_path("ent/proj").path == "ent/proj"
    with MlflowImporter(mlflow_tracking_uri=uri, store=tmp_path / "m.db", settings=s) as imp:
        assert len(list(imp.collect_runs(limit=3))) == 3
        client = MlflowClient(uri)
        runs = [MlflowRun(r, client) for r in client.search_runs(
            [r.info.experiment_id for r in [client.get_run(ids["plain"])]],
            "attributes.run_name = 'plain'")]
        report = imp.import_runs(runs, artifacts=False, namespace=Namespace("team", "proj"),
                                 parallel=False, max_workers=2, upload=False)
    assert [(r.status, r.path.split("/")[:2]) for r in report] == [
        ("imported", ["team", "proj"])]


# --- more backends and edges ---------------------------------------------------------------


def test_file_store_needs_its_opt_in_then_imports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    uri = f"file://{tmp_path / 'mlruns'}"
    db = tmp_path / "m.db"
    with MlflowImporter(mlflow_tracking_uri=uri, store=db, settings=settings_for(db)) as imp, \
            pytest.raises(ConfigError, match="MLFLOW_ALLOW_FILE_STORE"):
        list(imp.collect_runs())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    c = MlflowClient(uri)
    e = c.create_experiment("fs")
    r = c.create_run(e, start_time=T0, run_name="fs-run")
    c.log_batch(r.info.run_id, metrics=[
        Metric("inf", float("inf"), T0, 0), Metric("a/b.c d", 1.0, T0, 0),
        Metric("same", 1.0, T0, 1), Metric("same", 1.0, T0, 1)])  # stored twice here
    c.set_terminated(r.info.run_id, "KILLED", end_time=T0 + 1000)
    with MlflowImporter(mlflow_tracking_uri=uri, store=db, settings=settings_for(db)) as imp:
        report = imp.import_runs(imp.collect_runs(), upload=False)
        (rep,) = [x for x in report if x.run_name == "fs-run"]
        rec, rows, _files = local(imp.store, rep)
    assert rec.state == "killed" and rec.project == "fs"
    assert rows[0]["inf"] == math.inf and rows[0]["a/b.c d"] == 1.0
    assert same_points(stored_points(imp.store, rep), mlflow_points(uri, r.info.run_id))


def test_databricks_without_configuration_is_a_clear_error(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.databrickscfg
    db = tmp_path / "m.db"
    with MlflowImporter(mlflow_tracking_uri="databricks", store=db,
                        settings=settings_for(db)) as imp, pytest.raises(ConfigError) as info:
        list(imp.collect_runs())
    assert "Databricks" in info.value.message and "databricks configure" in info.value.hint


def test_wide_run_and_projection_unit_rules() -> None:
    pts = {"a": [mm.Point(1, 10, 1.0), mm.Point(0, 5, 0.5)],
           "b": [mm.Point(1, 12, 2.0)], "_step": [mm.Point(0, 5, 9.0)]}
    extra: list[str] = []
    stats = mm.Projection()
    rows = list(mm.project_history(pts, 0, extra.append, stats))
    assert rows == [{"_step": 0, "a": 0.5, "_timestamp": 0.005, "_runtime": 0.005},
                    {"_step": 1, "a": 1.0, "b": 2.0, "_timestamp": 0.012, "_runtime": 0.012}]
    # a@1 is at ts 10, not the row's 12: exact only through the points file; "_step" too
    assert sorted(json.loads(x)["key"] for x in extra) == ["_step", "a"]
    back = mm.points_from_history(rows, extra)
    assert same_points(back, {k: sorted(v, key=_order) for k, v in pts.items()})
    assert stats.history_keys()["lastStep"] == 1
    assert mm.project_for_experiment("/Users/a@b.com/x y", "7") == "Users-a-b.com-x-y"
    assert mm.project_for_experiment("✓✓", "7") == "mlflow-experiment-7"
    ids = {mm.wandb_run_id("sqlite:////x.db", f"r{i}") for i in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 8 and i.isalnum() for i in ids)
    assert mm.normalize_tracking_uri("http://u:secret@Host:5000/?token=x") == "http://host:5000"


def test_wide_run_imports_every_param_and_key(imported: Any) -> None:
    store, _report, by_name = imported
    rec, rows, _ = local(store, by_name["wide"])
    assert sum(1 for k in rec.config if k.startswith("p")) == 200
    assert len(rows) == 1 and sum(1 for k in rows[0] if k.startswith("k")) == 300


def test_cli_imports_and_reports(recipe: tuple[str, dict[str, str]], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from mirror.commands.import_mlflow import app

    uri, _ids = recipe
    monkeypatch.setenv("MIRROR_HOME", str(tmp_path))
    args = ["mlflow", "--tracking-uri", uri, "--experiment", "edge-cases", "--entity", "e",
            "--project", "p", "--no-upload", "--no-artifacts", "--store",
            str(tmp_path / "cli.db")]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["ok"] and doc["counts"]["imported"] >= 10 and doc["counts"]["skipped"] == 1
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "unchanged" in again.output
    bad = CliRunner().invoke(app, ["mlflow", "--tracking-uri", uri, "--experiment", "nope",
                                   "--no-upload", "--store", str(tmp_path / "cli.db")])
    assert bad.exit_code == 1 and "no MLflow experiment 'nope'" in bad.output
    helptext = CliRunner().invoke(app, ["mlflow", "--help"])
    assert "Example: mirror import mlflow" in helptext.output

"""MLflow importer, phase 2: import with upload into a seeded W&B-compatible server.

The judge is the official ``wandb`` client reading the server: every imported run must
look to it as it looks in the local store (config, summary, history rows with their
timestamps, state, tags, notes, commit, files byte for byte). The request log proves the
idempotence claims (a second import sends nothing; a changed run sends only its tail), and
an unreachable destination proves the offline path (import now, upload later). The last
test runs the importer against a real ``mlflow server`` on 127.0.0.1.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mirror.commands.push import app as push_app
from mirror.errors import EditRejected
from mirror.importers import mlflow_map as mm
from mirror.importers import mlflow_read
from mirror.importers.mlflow import ImportReport, MlflowImporter
from mirror.outbox.upload_run import (
    RunDeletedUpstream,
    pending_uploads,
    upload_cursor,
    upload_run,
)
from mirror.settings import Settings, sqlite_url
from mirror.store import Store, blobs, history, open_store
from mirror.store import outbox as outbox_store
from mirror.store import runs as store_runs
from mirror.upstream.client import WandbClient
from mirror.upstream.http import RetryPolicy, make_session

mlflow = pytest.importorskip("mlflow")
wandb = pytest.importorskip("wandb")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_importer_mlflow import (  # noqa: E402
    T0,
    build_recipe,
    fresh_mlflow,
    make_mlflow_template,
    mlflow_points,
    same_points,
    stored_points,
)

try:
    from mirror.server.faults import Fault
    from mirror.server.seed import SeedResult, seed_demo
    from mirror.server.testing import RunningServer, serve_in_thread
except ImportError as exc:  # pragma: no cover
    pytest.skip(f"mirror.server test support is missing: {exc}", allow_module_level=True)

PROJECT = "from-mlflow"


@pytest.fixture(scope="module")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mlflow_template(tmp_path_factory.mktemp("mlflow-template"))


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path
           ) -> tuple[str, dict[str, str]]:
    root = tmp_path_factory.mktemp("recipe")
    uri = fresh_mlflow(mlflow_template, root)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        return uri, build_recipe(uri, root, long_n=300)
    finally:
        os.chdir(cwd)


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[tuple[Store, SeedResult]]:
    s = open_store(tmp_path / "upstream" / "mirror.db")
    yield s, seed_demo(s)
    s.close()


@pytest.fixture
def server(upstream: tuple[Store, SeedResult]) -> Iterator[RunningServer]:
    with serve_in_thread(upstream[0], authoritative=True) as srv:
        yield srv


def settings(path: Path, base_url: str, api_key: str | None, entity: str) -> Settings:
    return Settings(home=path.parent, db_url=sqlite_url(path), base_url=base_url,
                    api_key=api_key, entity=entity)


def importer(uri: str, db: Path, srv: RunningServer | None, entity: str,
             base_url: str | None = None) -> MlflowImporter:
    url = base_url or (srv.url if srv else "http://127.0.0.1:9")
    key = srv.api_key if srv else "k" * 40
    return MlflowImporter(dst_base_url=url, dst_api_key=key, mlflow_tracking_uri=uri,
                          store=db, settings=settings(db, url, key, entity))


def client_for(srv: RunningServer) -> WandbClient:
    return WandbClient(make_session(base_url=srv.url, api_key=srv.api_key),
                       policy=RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05))


def same(a: Any, b: Any) -> bool:
    """Equal as JSON values: numbers by value, NaN == NaN, dict order ignored."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def local_run(store: Store, pk: int) -> tuple[Any, list[dict[str, Any]], dict[str, bytes]]:
    with store.session() as s:
        rec = store_runs.get_run_by_pk(s, pk)
        rows = list(history.iter_history(s, pk))
        files = {f.name: blobs.read_blob(store, f.blob_hash)
                 for f in store_runs.list_files(s, pk) if f.blob_hash}
    return rec, rows, files


def check_upstream(api: Any, store: Store, report: ImportReport, tmp: Path) -> int:
    """Assert the official client sees every imported run as the store holds it."""
    checked = 0
    for rep in report:
        if rep.status == "skipped":
            continue
        assert rep.upload == "uploaded", (rep.run_name, rep.upload_reason)
        assert rep.run_pk is not None
        rec, rows, files = local_run(store, rep.run_pk)
        run = api.run(rep.path)
        want_config = {k: v["value"] for k, v in rec.config.items() if k != "_wandb"}
        assert same(dict(run.config), want_config), rep.run_name
        got_summary = {k: v for k, v in run.summary_metrics.items()}
        assert same(got_summary, rec.summary), rep.run_name
        got_rows = list(run.scan_history(page_size=1000))
        assert same(got_rows, rows), rep.run_name  # every step, in order, with timestamps
        assert run.state == rec.state, rep.run_name
        assert run.tags == rec.tags and run.notes == rec.notes, rep.run_name
        assert run.commit == rec.commit and run.name == rec.display_name, rep.run_name
        assert run.group == rec.group_name, rep.run_name
        remote_files = {f.name: f for f in run.files()}
        assert set(remote_files) == set(files), rep.run_name
        for name, data in files.items():
            f = remote_files[name]
            target = tmp / rep.path.replace("/", "_")
            f.download(root=str(target), replace=True)
            assert (target / name).read_bytes() == data, (rep.run_name, name)
        meta = run.metadata
        start = rec.config["_mlflow"]["value"]["start_time"]
        if start is not None:
            assert meta["startedAt"].startswith(rec.created_at[:-1])  # MLflow's start
        checked += 1
    return checked


def test_import_with_upload_official_client_sees_every_run(
    recipe: tuple[str, dict[str, str]], server: RunningServer,
    upstream: tuple[Store, SeedResult], tmp_path: Path,
) -> None:
    uri, _ids = recipe
    entity = upstream[1].entity
    with importer(uri, tmp_path / "local.db", server, entity) as imp:
        report = imp.import_runs(imp.collect_runs())
        assert report.ok, [(r.run_name, r.reason, r.upload_reason) for r in report.failed]
        api = wandb.Api(overrides={"base_url": server.url}, api_key=server.api_key)
        assert check_upstream(api, imp.store, report, tmp_path / "dl") == 17
        states = {r.run_name: api.run(r.path).state for r in report if r.path}
    assert states["status-failed"] == "failed" and states["status-killed"] == "killed"
    assert states["scheduled"] == "pending" and states["still-running"] == "running"
    assert states["plain"] == "finished"


@pytest.mark.xfail(strict=True, reason="W&B's UpsertBucketInput has no createdAt: an "
                   "uploaded run's createdAt is the upload time (see the importer report); "
                   "the MLflow start is in wandb-metadata.json startedAt and _mlflow.start_time")
def test_upstream_created_at_is_the_mlflow_start(
    recipe: tuple[str, dict[str, str]], server: RunningServer,
    upstream: tuple[Store, SeedResult], tmp_path: Path,
) -> None:
    uri, ids = recipe
    from mlflow import MlflowClient

    run = MlflowClient(uri).get_run(ids["plain"])
    with importer(uri, tmp_path / "local.db", server, upstream[1].entity) as imp:
        report = imp.import_runs([run], artifacts=False)
        api = wandb.Api(overrides={"base_url": server.url}, api_key=server.api_key)
        assert api.run(report.runs[0].path).created_at == "2023-11-14T22:13:20Z"


def test_importing_twice_sends_nothing_and_a_change_sends_only_the_tail(
    tmp_path: Path, mlflow_template: Path, server: RunningServer,
    upstream: tuple[Store, SeedResult],
) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    uri = fresh_mlflow(mlflow_template, tmp_path / "ml")
    c = MlflowClient(uri)
    e = c.create_experiment("exp", artifact_location=str(tmp_path / "art"))
    rids = []
    for i in range(3):
        r = c.create_run(e, start_time=T0, run_name=f"r{i}")
        c.log_batch(r.info.run_id, metrics=[Metric("loss", 1 / (s + 1), T0 + s, s)
                                            for s in range(100)])
        c.log_text(r.info.run_id, f"notes of {i}", "notes.txt")
        rids.append(r.info.run_id)
    log = server.request_log
    with importer(uri, tmp_path / "local.db", server, upstream[1].entity) as imp:
        first = imp.import_runs(imp.collect_runs())
        assert first.counts()["upload_uploaded"] == 3
        assert log.count("file_stream") == 3  # 100 rows + summary, one request per run
        log.clear()
        again = imp.import_runs(imp.collect_runs())
        assert again.counts() == {"unchanged": 3, "upload_unchanged": 3}
        assert len(log) == 0, [(e.route, e.operations) for e in log.entries()]

        c.log_batch(rids[1], metrics=[Metric("loss", 0.001, T0 + 500, s)
                                      for s in range(100, 110)])
        third = imp.import_runs(imp.collect_runs())
        by_id = {r.mlflow_run_id: r for r in third}
        assert by_id[rids[1]].status == "updated" and by_id[rids[1]].upload == "uploaded"
        assert {by_id[rids[0]].upload, by_id[rids[2]].upload} == {"unchanged"}
        assert log.count("file_stream") == 1 and log.count("storage_put") == 1  # metadata
        path = by_id[rids[1]].path
        assert path is not None
        cursor = upload_cursor(imp.store, server.url, *path.split("/"))
        assert cursor is not None and cursor["history"]["lines"] == 110
    api = wandb.Api(overrides={"base_url": server.url}, api_key=server.api_key)
    steps = [row["_step"] for row in api.run(path).scan_history(page_size=1000)]
    assert steps == list(range(110))  # the tail appended once, nothing duplicated


def test_offline_import_completes_and_a_later_upload_sends_it(
    recipe: tuple[str, dict[str, str]], upstream: tuple[Store, SeedResult], tmp_path: Path,
) -> None:
    uri, _ids = recipe
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    db = tmp_path / "local.db"
    entity = upstream[1].entity
    with importer(uri, db, None, entity, base_url=dead) as imp:
        report = imp.import_runs(imp.collect_runs())
        assert report.ok  # pending is not a failure
        assert report.counts()["upload_pending"] == 17 and report.counts()["imported"] == 17
        assert all("connection" in (r.upload_reason or "") for r in report if r.upload)
        with imp.store.session() as s:  # queries see the runs at once
            local = store_runs.query_runs(s, entity, "edge-cases")
            queued = outbox_store.list_ops(s, kinds=["create_run"], states=["pending"])
        assert {r.display_name for r in local} >= {"plain", "weird-metrics", "parent"}
        assert len(queued) == 17  # one upload per run, queued with the import
        # ... and so does the offline `mirror.Api` (wandb.Api-shaped, reads the store)
        from mirror.api import Api

        offline = Api(settings=settings(db, dead, "k" * 40, entity), store=imp.store)
        names = {r.name for r in offline.runs(f"{entity}/edge-cases")}
        assert {"plain", "weird-metrics", "parent"} <= names
    with serve_in_thread(upstream[0], authoritative=True) as srv:
        with importer(uri, db, srv, entity) as imp:
            assert len(pending_uploads(imp.store, srv.url)) == 17
        # the later `mirror push`: the queued create_run ops upload every run
        result = CliRunner().invoke(push_app, ["--json", "--store", str(db)],
                                    env={"WANDB_BASE_URL": srv.url,
                                         "WANDB_API_KEY": srv.api_key})
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["acked"] == 17
        with importer(uri, db, srv, entity) as imp:
            assert pending_uploads(imp.store, srv.url) == []
            with imp.store.session() as s:
                assert outbox_store.list_ops(s, states=["pending", "retry", "failed"]) == []
            api = wandb.Api(overrides={"base_url": srv.url}, api_key=srv.api_key)
            for rep in report:
                rep.upload = "uploaded"
            assert check_upstream(api, imp.store, report, tmp_path / "dl") == 17
            again = imp.import_runs(imp.collect_runs())  # nothing left to send
            assert again.counts() == {"unchanged": 17, "upload_unchanged": 17, "skipped": 2}


def test_upload_resumes_after_a_crash_without_duplicates(
    recipe: tuple[str, dict[str, str]], server: RunningServer,
    upstream: tuple[Store, SeedResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlflow import MlflowClient

    from mirror.upstream import filestream

    uri, ids = recipe
    with importer(uri, tmp_path / "local.db", server, upstream[1].entity) as imp:
        rep = imp.import_runs([MlflowClient(uri).get_run(ids["long-history"])],
                              artifacts=False, upload=False).runs[0]
        assert rep.run_pk is not None
        real_post = filestream.FileStreamWriter.post
        calls = {"n": 0}

        def crashing_post(self: Any, body: Any) -> dict[str, Any]:
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt  # the process dies between two requests
            return real_post(self, body)

        monkeypatch.setattr(filestream.FileStreamWriter, "post", crashing_post)
        with client_for(server) as client:
            with pytest.raises(KeyboardInterrupt):
                upload_run(imp.store, client, rep.run_pk, max_request_bytes=4096)
            monkeypatch.setattr(filestream.FileStreamWriter, "post", real_post)
            # the server also applies one request whose answer is lost, then it resumes
            server.faults.add(Fault(route="file_stream", kind="drop_after", calls=[1]))
            result = upload_run(imp.store, client, rep.run_pk, max_request_bytes=4096)
        assert result.history_offset > 0 and result.completed
        _rec, rows, _files = local_run(imp.store, rep.run_pk)
    api = wandb.Api(overrides={"base_url": server.url}, api_key=server.api_key)
    got = list(api.run(rep.path).scan_history(page_size=1000))
    assert same(got, rows) and len(got) == 300


def test_a_run_deleted_upstream_is_reported_and_can_be_remapped(
    tmp_path: Path, mlflow_template: Path, server: RunningServer,
    upstream: tuple[Store, SeedResult],
) -> None:
    from mlflow import MlflowClient

    uri = fresh_mlflow(mlflow_template, tmp_path / "ml")
    c = MlflowClient(uri)
    e = c.create_experiment("exp", artifact_location=str(tmp_path / "art"))
    r = c.create_run(e, start_time=T0, run_name="doomed")
    c.log_metric(r.info.run_id, "x", 1.0, T0, 0)
    with importer(uri, tmp_path / "local.db", server, upstream[1].entity) as imp:
        first = imp.import_runs(imp.collect_runs()).runs[0]
        assert first.upload == "uploaded" and first.path is not None
        api = wandb.Api(overrides={"base_url": server.url}, api_key=server.api_key)
        api.run(first.path).delete()
        c.log_metric(r.info.run_id, "x", 2.0, T0 + 1, 1)
        second = imp.import_runs(imp.collect_runs()).runs[0]
        assert second.status == "updated" and second.upload == "failed"
        assert "deleted" in (second.upload_reason or "") and "remap" in (
            second.upload_reason or "")
        third = imp.import_runs(imp.collect_runs(), remap_deleted=True).runs[0]
        assert third.upload == "uploaded" and third.path != first.path
        assert third.path is not None
        with client_for(server) as client, pytest.raises(RunDeletedUpstream):
            # the old id stays refused: upload_run says so, typed
            with imp.store.transaction() as s:
                store_runs.update_run(s, third.run_pk, run_id=first.path.split("/")[2])
            upload_run(imp.store, client, third.run_pk, force=True)
    assert [row["x"] for row in api.run(third.path).scan_history()] == [1.0, 2.0]
    # W&B itself answers with HTTP 409: the same typed error
    with importer(uri, tmp_path / "local.db", server, upstream[1].entity) as imp, \
            client_for(server) as client:

        def refuse(inputs: Any) -> Any:
            raise EditRejected("UpsertBuckets: HTTP 409 from server: run was previously "
                               "created and deleted", status=409, operation="UpsertBuckets")

        client.upsert_buckets = refuse  # type: ignore[method-assign]
        assert third.run_pk is not None
        with pytest.raises(RunDeletedUpstream):
            upload_run(imp.store, client, third.run_pk, force=True)


# --- a real `mlflow server` ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Generous on purpose: on a loaded 2-core CI box `mlflow server` (python start-up, the
# FastAPI app, the store) took longer than the 45 s this used to allow; readiness is
# detected by polling, so a fast start costs nothing.
SERVER_START_S = 240.0


def _answers(url: str) -> bool:
    """The tracking API itself answers (``/health`` can be up before the store is)."""
    req = urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/search",
                                 data=b'{"max_results": 1}', method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@pytest.fixture
def mlflow_server(tmp_path: Path, mlflow_template: Path) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1 (a subprocess group, always terminated), ready:
    its health check and its tracking API both answered."""
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    port = _free_port()
    shutil.copy(mlflow_template, tmp_path / "server.db")  # migrated: starts faster
    proc = subprocess.Popen(
        [exe, "server", "--host", "127.0.0.1", "--port", str(port), "--backend-store-uri",
         f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
         str(tmp_path / "mlartifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "wb"),  # noqa: SIM115
        start_new_session=True, cwd=tmp_path,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
                    if resp.status == 200 and _answers(url):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (tmp_path / "server.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"mlflow server did not start: {log}")
            time.sleep(0.2)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.mark.slow
def test_real_mlflow_server_import_and_upload(
    mlflow_server: str, server: RunningServer, upstream: tuple[Store, SeedResult],
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    c = MlflowClient(mlflow_server)
    e = c.create_experiment("over-http")
    r = c.create_run(e, start_time=T0, run_name="http-run",
                     tags={"mlflow.source.git.commit": "c" * 40})
    c.log_batch(r.info.run_id, metrics=[Metric(f"k{k}", s * k + 0.5, T0 + s, s)
                                        for k in range(12) for s in range(200)]
                + [Metric("dup", 1.0, T0 + 1, 5), Metric("dup", 2.0, T0 + 2, 5),
                   Metric("nan", float("nan"), T0, 0), Metric("inf", float("inf"), T0, 0)])
    d = tmp_path / "tree"
    (d / "a" / "b").mkdir(parents=True)
    (d / "a" / "b" / "empty.txt").write_bytes(b"")
    (d / "ünï.txt").write_bytes(b"u")
    c.log_artifacts(r.info.run_id, str(d))
    c.set_terminated(r.info.run_id, "FINISHED", end_time=T0 + 1000)
    r2 = c.create_run(e, start_time=T0, run_name="child",
                      tags={"mlflow.parentRunId": r.info.run_id})
    c.set_terminated(r2.info.run_id, "FAILED", end_time=T0 + 10)

    with importer(mlflow_server, tmp_path / "local.db", server, upstream[1].entity) as imp:
        assert imp.source.remote and imp.source.key_workers == 8
        report = imp.import_runs(imp.collect_runs())
        why = [(r.run_name, r.reason, r.upload, r.upload_reason) for r in report]
        assert report.ok and report.counts()["imported"] == 2, why
        # MLflow's bulk endpoint: one request per key for both runs, none per key and run
        # (a transient bulk failure would show here, with its reason)
        assert imp.source.bulk_error is None, imp.source.bulk_error
        assert imp.source.calls["get_metric_history_bulk"] == 15, dict(imp.source.calls)
        assert imp.source.calls["get_metric_history"] == 0, dict(imp.source.calls)
        by_name = {x.run_name: x for x in report}
        rep = by_name["http-run"]
        assert same_points(stored_points(imp.store, rep), mlflow_points(mlflow_server,
                                                                          r.info.run_id))
        rec, rows, files = local_run(imp.store, rep.run_pk or 0)
        assert rows[0]["inf"] == math.inf and math.isnan(rows[0]["nan"])
        assert files[mm.ARTIFACTS_PREFIX + "a/b/empty.txt"] == b""
        assert files[mm.ARTIFACTS_PREFIX + "ünï.txt"] == b"u"
        child = local_run(imp.store, by_name["child"].run_pk or 0)[0]
        assert child.group_name == rec.run_id and child.state == "failed"
        api = wandb.Api(overrides={"base_url": server.url}, api_key=server.api_key)
        assert check_upstream(api, imp.store, report, tmp_path / "dl") == 2
        again = imp.import_runs(imp.collect_runs())
        assert again.counts() == {"unchanged": 2, "upload_unchanged": 2}
    # a server without the bulk endpoint (a real 404 from it): bulk is turned off after
    # one refused request, and every key comes one call each by the bounded pool
    monkeypatch.setattr(mlflow_read, "BULK_ENDPOINT", "/ajax-api/2.0/mlflow/metrics/nope")
    with importer(mlflow_server, tmp_path / "other.db", None, "e") as imp2:
        real = imp2.source.metric_history
        threads: list[str] = []

        def recorded(run_id: str, key: str) -> list[mm.Point]:
            threads.append(threading.current_thread().name)
            return real(run_id, key)

        imp2.source.metric_history = recorded  # type: ignore[method-assign]
        report2 = imp2.import_runs(imp2.collect_runs(), upload=False)
        assert threads and all(t.startswith("mirror-mlflow-keys") for t in threads), threads
        why = [(r.run_name, r.status, r.reason) for r in report2]
        assert report2.ok and report2.counts() == {"imported": 2}, why
        assert not imp2.source.bulk and "no bulk endpoint" in (imp2.source.bulk_error or "")
        assert imp2.source.calls["get_metric_history_bulk"] >= 1
        assert imp2.source.calls["get_metric_history"] == 15, dict(imp2.source.calls)
        rep2 = next(x for x in report2 if x.run_name == "http-run")
        assert same_points(stored_points(imp2.store, rep2), mlflow_points(mlflow_server,
                                                                            r.info.run_id))
    assert json.loads(files[mm.METADATA_FILE])["git"]["commit"] == "c" * 40

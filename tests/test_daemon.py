"""`mirror daemon` against the project's own W&B-compatible server on 127.0.0.1.

Real stores, a real server (whose request log counts what crossed the wire), real
processes where the acceptance is about processes (the lock, signals, SIGKILL), the
in-process :class:`~mirror.daemon.Daemon` where a test needs to look inside. Every wait
is a condition with a timeout (``wait_for``), never a bare sleep; the only timed pauses
are the fault injection itself (a slow writer, the moment of a SIGKILL).
"""

from __future__ import annotations

import base64
import gc
import hashlib
import io
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from crash import check_store_sound

from mirror.daemon import Daemon, DaemonConfig, daemon_status, format_status
from mirror.outbox import overlay
from mirror.outbox.edits import enqueue_patch
from mirror.outbox.ops import doc_patch
from mirror.outbox.upload_run import pending_uploads
from mirror.server.faults import Fault, FaultPlan
from mirror.server.http import apply_file_stream, store_uploaded_file
from mirror.server.seed import SeedResult, seed_demo
from mirror.server.testing import RunningServer, serve_in_thread
from mirror.settings import Settings, sqlite_url
from mirror.store import Store, blobs, history, imports, open_store, runs
from mirror.store import outbox as outbox_store
from mirror.store.codec import dumps
from mirror.store.outbox import ACTIVE_STATES
from mirror.sync.engine import SyncOptions
from mirror.sync.runner import sync
from mirror.upstream.client import WandbClient

REPO_ROOT = Path(__file__).resolve().parents[1]


# Fail on any warning (style guide 14); the libraries' own deprecations stay silenced.
pytestmark = [
    pytest.mark.filterwarnings("error"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:wandb.*"),
    # watchdog's inotify observer warns (harmlessly) when a new directory's watch races
    # its recursive re-add; under "error" that would kill the observer thread.
    pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning"),
]


# --- guards and helpers -----------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_thread_leaks() -> Iterator[None]:
    """Every thread a test starts (daemon workers, observers, servers) ends with it."""
    before = set(threading.enumerate())
    yield
    gc.collect()
    deadline = time.monotonic() + 10
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    while leaked and time.monotonic() < deadline:
        leaked[0].join(0.1)
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leaked, f"threads leaked: {[t.name for t in leaked]}"


def wait_for(cond: Callable[[], Any], timeout: float, what: str,
              describe: Callable[[], Any] | None = None) -> Any:
    """Poll ``cond`` until it is truthy (returned) or ``timeout`` passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"; state: {describe()}" if describe else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        pause.wait(0.05)


# Read at import: the autouse fixture of conftest.py removes MIRROR_* from the environment.
STRESS_SCALE = float(os.environ.get("MIRROR_STRESS_SCALE", "1"))
DROP_MB = int(os.environ.get("MIRROR_DROP_MB", "24"))  # the acceptance size is 200


def _scale() -> float:
    return STRESS_SCALE


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[tuple[Store, SeedResult]]:
    s = open_store(tmp_path / "upstream" / "mirror.db")
    res = seed_demo(s)
    yield s, res
    s.close()


@pytest.fixture
def server(upstream: tuple[Store, SeedResult]) -> Iterator[RunningServer]:
    with serve_in_thread(upstream[0], authoritative=True) as srv:
        yield srv


def local_settings(tmp_path: Path, srv: RunningServer, **kw: Any) -> Settings:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return Settings(home=home, db_url=sqlite_url(home / "mirror.db"), base_url=srv.url,
                    api_key=srv.api_key, **kw)


def presync(settings: Settings, srv: RunningServer, target: str) -> None:
    """Pull a project into the local store before the daemon starts (edits need runs)."""
    store = open_store(settings)
    client = WandbClient(settings)
    try:
        assert sync(store, settings, [target], SyncOptions(), client=client).ok
    finally:
        client.close()
        store.close()


def finished_runs(up: Store, res: SeedResult) -> list[str]:
    with up.session() as s:
        return [r.run_id for r in runs.query_runs(s, res.entity, res.project)
                if r.state == "finished"]


def edit_summary(store: Store, entity: str, project: str, run_id: str,
                 values: dict[str, Any]) -> None:
    """A local edit as `mirror.Api` makes it: a per-key patch against the user's view."""
    with store.transaction() as s:
        pk = runs.run_pk(s, entity, project, run_id)
        assert pk is not None
        view = overlay.view_run(s, pk)
        assert view is not None
        before = dict(view.summary or {})
        enqueue_patch(s, pk, "summary", doc_patch(before, {**before, **values}))


def op_counts(store: Store) -> dict[str, int]:
    with store.session() as s:
        return outbox_store.op_counts(s)


def active_ops(store: Store) -> int:
    counts = op_counts(store)
    return sum(counts.get(state, 0) for state in ACTIVE_STATES)


def server_summary(up: Store, entity: str, project: str, run_id: str) -> dict[str, Any]:
    with up.session() as s:
        rec = runs.get_run(s, entity, project, run_id)
        assert rec is not None
        return dict(rec.summary or {})


def server_file_md5(up: Store, entity: str, project: str, run_id: str,
                    name: str) -> str | None:
    with up.session() as s:
        pk = runs.run_pk(s, entity, project, run_id)
        f = runs.get_file(s, pk, name) if pk is not None else None
        return f.md5 if f is not None and not f.tombstoned else None


def daemon_env(settings: Settings) -> dict[str, str]:
    assert settings.db_path is not None
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WANDB_BASE_URL", "WANDB_API_KEY", "MIRROR_"))}
    env.update(MIRROR_HOME=str(settings.home), WANDB_BASE_URL=settings.base_url,
               WANDB_API_KEY=settings.api_key or "",
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    return env


DAEMON = [sys.executable, "-m", "mirror.commands.daemon"]


def spawn(settings: Settings, log: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as err:
        return subprocess.Popen([*DAEMON, "--foreground", *args], env=daemon_env(settings),
                                stdout=subprocess.DEVNULL, stderr=err, cwd=REPO_ROOT)


def running_as(settings: Settings, pid: int) -> bool:
    info = daemon_status(settings)
    return bool(info["running"] and info["pid"] == pid)


def started_or_exited(settings: Settings, proc: subprocess.Popen[bytes]) -> bool:
    return running_as(settings, proc.pid) or proc.poll() is not None


@pytest.fixture
def mlflow_store(tmp_path: Path) -> tuple[str, Any]:
    """A real MLflow sqlite:/// tracking store with one experiment (artifacts in tmp)."""
    mlflow = pytest.importorskip("mlflow", reason="mlflow is an optional extra")
    (tmp_path / "mlflow").mkdir()
    uri = sqlite_url(tmp_path / "mlflow" / "mlflow.db")
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("watched", artifact_location=str(tmp_path / "mlartifacts"))
    return uri, (client, exp)


def log_mlflow_run(client: Any, exp: str, name: str, steps: int) -> str:
    from mlflow.entities import Metric, Param

    run = client.create_run(exp, run_name=name)
    rid = run.info.run_id
    client.log_batch(rid, params=[Param("lr", "0.01")],
                     metrics=[Metric("loss", 1.0 / (i + 1), 1_700_000_000_000 + i, i)
                              for i in range(steps)])
    client.set_terminated(rid, "FINISHED")
    return str(rid)


def imported(store: Store, uri: str, mlflow_run_id: str) -> tuple[str, str, str] | None:
    """``entity/project/run_id`` of an imported MLflow run in the local store."""
    from mirror.importers.mlflow_map import normalize_tracking_uri

    with store.session() as s:
        entry = imports.get_import(s, "mlflow", normalize_tracking_uri(uri), mlflow_run_id)
        rec = runs.get_run_by_pk(s, entry.run_pk) if entry else None
    return (rec.entity, rec.project, rec.run_id) if rec else None


# --- one daemon per store; signals -------------------------------------------------------


def test_a_second_daemon_refuses_naming_the_first_pid(server: RunningServer,
                                                      tmp_path: Path) -> None:
    settings = local_settings(tmp_path, server)
    first = spawn(settings, tmp_path / "first.log", "--interval", "30")
    try:
        wait_for(lambda: running_as(settings, first.pid), 60, "the first daemon",
                 lambda: (first.poll(), (tmp_path / "first.log").read_text()[-2000:]))
        for extra in (["--foreground"], []):  # in the foreground, and detaching
            second = subprocess.run([*DAEMON, *extra, "--interval", "30"],
                                    env=daemon_env(settings), capture_output=True, text=True,
                                    timeout=60, cwd=REPO_ROOT)
            assert second.returncode == 1, second.stderr
            assert f"pid {first.pid}" in second.stderr and "already running" in second.stderr
            assert "Traceback" not in second.stderr
        assert running_as(settings, first.pid), "the refused start disturbed the first"
        first.send_signal(signal.SIGINT)
        start = time.monotonic()
        assert first.wait(timeout=10) == 0
        assert time.monotonic() - start < 5
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    info = daemon_status(settings)
    assert info["running"] is False and info["clean_stop"] is True
    log_text = (settings.home / "logs" / "daemon.log").read_text()
    assert "daemon started" in log_text and "daemon stopped" in log_text
    assert settings.api_key and settings.api_key not in log_text


def test_sigterm_stops_a_busy_daemon_within_5_seconds(
        upstream: tuple[Store, SeedResult], server: RunningServer, tmp_path: Path) -> None:
    _, res = upstream
    settings = local_settings(tmp_path, server)
    server.faults = FaultPlan([Fault(route="*", kind="latency", probability=1.0,
                                     latency_ms=300)])
    proc = spawn(settings, tmp_path / "daemon.log", "--interval", "30", "--project",
                 f"{res.entity}/{res.project}")
    try:
        wait_for(lambda: running_as(settings, proc.pid), 60, "the daemon")
        wait_for(lambda: server.request_log.count("graphql") >= 3, 60, "a pull in progress")
        assert (daemon_status(settings)["last_pull"] or {}).get("at") is None, "pull finished"
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        assert proc.wait(timeout=10) == 0
        took = time.monotonic() - start
        assert took < 5, f"SIGTERM took {took:.1f}s"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    info = daemon_status(settings)
    assert info["running"] is False
    assert info["clean_stop"] is True, "the pull in flight was not cut short"


# --- offline / online ----------------------------------------------------------------


def test_offline_edits_and_drops_wait_then_go_out_within_two_intervals(
        upstream: tuple[Store, SeedResult], tmp_path: Path) -> None:
    up, res = upstream
    interval = 1.0
    srv = serve_in_thread(up, authoritative=True)
    port = srv.port
    settings = local_settings(tmp_path, srv)
    target = f"{res.entity}/{res.project}"
    presync(settings, srv, target)
    daemon = Daemon(settings, DaemonConfig(interval=interval, projects=(target,), settle=0.2))
    daemon.start()
    local = open_store(settings)  # another connection, as a notebook or the CLI has
    try:
        wait_for(lambda: (daemon_status(settings)["last_pull"] or {}).get("ok"), 60,
                 "the first pull")
        srv.stop()
        wait_for(lambda: daemon_status(settings)["online"] is False, 30, "offline detection")
        chosen = finished_runs(up, res)[:3]
        for i, run_id in enumerate(chosen):
            edit_summary(local, res.entity, res.project, run_id, {"offline_edit": i})
        data = os.urandom(300_000)
        drop = settings.home / "uploads" / res.entity / res.project / chosen[0] / "offline.bin"
        drop.parent.mkdir(parents=True)
        drop.write_bytes(data)
        wait_for(lambda: not drop.exists(), 30, "the drop to be taken while offline")
        assert op_counts(local).get("pending", 0) + op_counts(local).get("retry", 0) == 4
        info = daemon_status(settings)
        text = "\n".join(format_status(info))
        assert "offline since" in text and "last error:" in text, text
        assert info["next_attempt_in"] is not None and info["next_attempt_in"] <= interval
        assert not op_counts(local).get("failed"), "an op died of being offline"
        assert all(w.is_alive() for w in daemon.workers), "a worker crashed offline"

        srv = serve_in_thread(up, authoritative=True, port=port)
        back = time.monotonic()
        wait_for(lambda: active_ops(local) == 0, 30, "the outbox to drain",
                 lambda: op_counts(local))
        elapsed = time.monotonic() - back
        assert elapsed <= 2 * interval, f"resumed after {elapsed:.2f}s > 2 intervals"
        for i, run_id in enumerate(chosen):
            assert server_summary(up, res.entity, res.project, run_id)["offline_edit"] == i
        assert server_file_md5(up, res.entity, res.project, chosen[0], "offline.bin") == \
            blobs.md5_b64(data)
        wait_for(lambda: daemon_status(settings)["online"] is True, 10, "online status")
        assert op_counts(local).get("failed") is None
    finally:
        local.close()
        assert daemon.stop()
        srv.stop()


def test_a_local_edit_by_another_process_is_pushed_soon_not_after_the_interval(
        upstream: tuple[Store, SeedResult], server: RunningServer, tmp_path: Path) -> None:
    up, res = upstream
    settings = local_settings(tmp_path, server)
    target = f"{res.entity}/{res.project}"
    presync(settings, server, target)
    run_id = finished_runs(up, res)[0]
    with Daemon(settings, DaemonConfig(interval=300, projects=(target,))) as daemon:
        wait_for(lambda: (daemon_status(settings)["last_pull"] or {}).get("ok"), 60,
                 "the first pull")
        script = "\n".join([  # what `mirror.Api().run(...).summary.update()` does
            "import sys",
            "from mirror.outbox import overlay",
            "from mirror.outbox.edits import enqueue_patch",
            "from mirror.outbox.ops import doc_patch",
            "from mirror.store import open_store, runs",
            "s = open_store(sys.argv[1])",
            "with s.transaction() as tx:",
            f"    pk = runs.run_pk(tx, {res.entity!r}, {res.project!r}, {run_id!r})",
            "    before = dict(overlay.view_run(tx, pk).summary or {})",
            "    enqueue_patch(tx, pk, 'summary', doc_patch(before, {**before, 'from_cli': 42}))",
            "s.close()",
        ])
        done = subprocess.run([sys.executable, "-c", script, str(settings.db_path)],
                              env=daemon_env(settings), cwd=REPO_ROOT, timeout=60,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        edited = time.monotonic()
        wait_for(lambda: server_summary(up, res.entity, res.project, run_id).get("from_cli")
                 == 42, 10, "the edit on the server")
        assert time.monotonic() - edited < 5, "the pusher waited for its interval"
        assert daemon.pusher is not None
    assert daemon.stopped.is_set()


# --- the drop folder -----------------------------------------------------------------


def test_a_file_copied_slowly_into_the_drop_folder_is_uploaded_once_and_complete(
        upstream: tuple[Store, SeedResult], server: RunningServer, tmp_path: Path) -> None:
    up, res = upstream
    settings = local_settings(tmp_path, server)
    target = f"{res.entity}/{res.project}"
    presync(settings, server, target)
    run_id = finished_runs(up, res)[1]
    megabytes = DROP_MB
    run_dir = settings.home / "uploads" / res.entity / res.project / run_id
    unknown = settings.home / "uploads" / res.entity / res.project / "nosuchrun" / "keep.txt"
    with Daemon(settings, DaemonConfig(interval=30, projects=(target,), settle=0.5)):
        unknown.parent.mkdir(parents=True)
        unknown.write_text("for a run that does not exist")
        dest = run_dir / "checkpoints" / "model.ckpt"
        dest.parent.mkdir(parents=True)
        md5 = hashlib.md5()
        stop = threading.Event()

        def slow_copy() -> None:  # like `cp` over a slow disk: 1 MB, pause, 1 MB ...
            rng = random.Random(7)
            with open(dest, "wb") as fh:
                for _ in range(megabytes):
                    chunk = rng.randbytes(1 << 20)
                    md5.update(chunk)
                    fh.write(chunk)
                    fh.flush()
                    if stop.wait(0.05):
                        return

        writer = threading.Thread(target=slow_copy, name="slow-copy")
        writer.start()
        try:
            writer.join(timeout=120)
        finally:
            stop.set()
            writer.join()
        expected = base64.b64encode(md5.digest()).decode("ascii")
        wait_for(lambda: server_file_md5(up, res.entity, res.project, run_id,
                                         "checkpoints/model.ckpt") == expected,
                 60 + megabytes / 5, "the upload, complete")
        puts = [e for e in server.request_log.entries("storage_put")
                if e.path.endswith("checkpoints/model.ckpt")]
        assert len(puts) == 1, "uploaded more than once (or a partial file went out)"
        assert puts[0].request_bytes == megabytes << 20
        assert not dest.exists(), "the taken file stays in the drop folder"
        wait_for(lambda: "/".join(unknown.parts[-4:]) in
                 ((daemon_status(settings)["uploads"] or {}).get("unknown") or []),
                 20, "the unknown-run report")
        assert unknown.read_text() == "for a run that does not exist"
        text = "\n".join(format_status(daemon_status(settings)))
        assert "1 file(s) for unknown runs" in text and "nosuchrun/keep.txt" in text


# --- MLflow --------------------------------------------------------------------------


def test_a_run_logged_to_a_watched_mlflow_store_reaches_the_server_by_itself(
        server: RunningServer, tmp_path: Path, mlflow_store: tuple[str, Any]) -> None:
    up = server.store
    uri, (client, exp) = mlflow_store
    settings = local_settings(tmp_path, server)
    config = DaemonConfig(interval=300, watch_mlflow=(uri,), mlflow_entity="mirror",
                          mlflow_project="from-mlflow")
    with Daemon(settings, config) as daemon:
        wait_for(lambda: daemon_status(settings)["last_import"], 60, "the first import")
        rid = log_mlflow_run(client, exp, "watched-run", steps=50)
        logged = time.monotonic()
        local = daemon.store
        path = wait_for(lambda: imported(local, uri, rid), 30, "the import")

        def on_server() -> bool:
            with up.session() as s:
                rec = runs.get_run(s, *path)
                return bool(rec and rec.pk and history.history_bounds(s, rec.pk)[0] == 50)

        wait_for(on_server, 30, "the run on the server")
        assert time.monotonic() - logged < 30
        with up.session() as s:
            rec = runs.get_run(s, *path)
            assert rec is not None and rec.state == "finished"
            assert (rec.summary or {}).get("loss") == pytest.approx(1.0 / 50)


# --- concurrency: a daemon and CLI processes on one store ----------------------------

CLI_LOOP = """
import sys, time
from mirror.errors import StoreBusyError
from mirror.outbox import overlay
from mirror.outbox.edits import enqueue_patch
from mirror.outbox.ops import doc_patch
from mirror.outbox.upload_run import pending_uploads
from mirror.store import open_store, runs

path, entity, project, run_id, seconds, tag = sys.argv[1:7]
deadline = time.monotonic() + float(seconds)
reads = writes = busy = 0
n = 0
while time.monotonic() < deadline:
    s = open_store(path, create=False)
    try:
        try:
            with s.session() as tx:
                runs.count_runs(tx, entity, project)
                list(runs.query_runs(tx, entity, project))
            reads += 1
            with s.transaction() as tx:
                pk = runs.run_pk(tx, entity, project, run_id)
                before = dict(overlay.view_run(tx, pk).summary or {})
                after = {**before, f"{tag}_{n}": n}
                enqueue_patch(tx, pk, "summary", doc_patch(before, after))
            writes += 1
            n += 1
        except StoreBusyError as exc:
            busy += 1
            print("BUSY", exc, file=sys.stderr)
    finally:
        s.close()
print(reads, writes, busy)
"""


@pytest.mark.slow
def test_cli_readers_and_writers_never_see_database_locked_next_to_the_daemon(
        tmp_path: Path) -> None:
    from mirror.server.seed import generate

    up = open_store(tmp_path / "upstream" / "mirror.db")
    gen = generate(up, runs=30, steps=4000, keys=6, entity="team", project="big")
    try:
        with serve_in_thread(up, authoritative=True) as srv:
            settings = local_settings(tmp_path, srv)
            presync(settings, srv, "team/big")
            with up.transaction() as s:  # grow every run: the daemon's pull has work
                for run_id in gen.run_ids:
                    pk = runs.run_pk(s, "team", "big", run_id)
                    assert pk is not None
                    runs.update_run(s, pk, heartbeat_at="2099-01-01T00:00:00Z")
            for run_id in gen.run_ids:
                lines = [dumps({"_step": 4000 + k, "m0": k}) for k in range(2000)]
                apply_file_stream(up, "team", "big", run_id, {"files": {
                    "wandb-history.jsonl": {"offset": 4000, "content": lines}},
                    "complete": True, "exitcode": 0})
            config = DaemonConfig(interval=0.3, projects=("team/big",), full_every=1)
            with Daemon(settings, config):
                procs = [subprocess.Popen(
                    [sys.executable, "-c", CLI_LOOP, str(settings.db_path), "team", "big",
                     gen.run_ids[i], "6", f"cli{i}"],
                    env=daemon_env(settings), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True) for i in range(2)]
                outs = [p.communicate(timeout=120) for p in procs]
                for p, (out, errout) in zip(procs, outs, strict=True):
                    assert p.returncode == 0, errout[-2000:]
                    reads, writes, busy = map(int, out.split())
                    assert busy == 0 and "locked" not in errout, errout[-2000:]
                    assert reads > 5 and writes > 5, out
                local = open_store(settings)
                try:
                    wait_for(lambda: active_ops(local) == 0, 60, "the CLI edits pushed",
                             lambda: op_counts(local))
                    with local.session() as s:
                        pk = runs.run_pk(s, "team", "big", gen.run_ids[0])
                        assert pk is not None
                        assert history.history_bounds(s, pk)[0] == 6000, "pull incomplete"
                finally:
                    local.close()
            summary = server_summary(up, "team", "big", gen.run_ids[0])
            assert any(k.startswith("cli0_") for k in summary)
    finally:
        up.close()


# --- crash-only: SIGKILL at random moments -------------------------------------------


def snapshot(store: Store, entity: str, project: str) -> dict[str, Any]:
    """Everything a pull writes, per run (what "the store equals the server" means)."""
    out: dict[str, Any] = {}
    keep = ("display_name", "state", "config", "summary", "tags", "notes", "created_at",
            "heartbeat_at", "history_line_count", "events_line_count", "last_step",
            "tombstoned")
    with store.session() as s:
        for rec in runs.query_runs(s, entity, project, include_tombstoned=True):
            assert rec.pk is not None
            files = {f.name: (f.size_bytes, f.md5, f.tombstoned)
                     for f in runs.list_files(s, rec.pk, include_tombstoned=True)}
            out[rec.run_id] = {
                "run": dumps({k: getattr(rec, k) for k in keep}),
                "history": dumps(list(history.iter_history(s, rec.pk))),
                "events": history.count_events(s, rec.pk),
                "files": files,
            }
    return out


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing_and_applies_everything_once(
        upstream: tuple[Store, SeedResult], server: RunningServer, tmp_path: Path,
        mlflow_store: tuple[str, Any]) -> None:
    """The daemon SIGKILLed >= 20 times (seeded moments) while it pulls a growing
    project, pushes a large outbox, takes dropped files and imports an MLflow store.

    Afterwards: the store equals the server, every edit, drop and MLflow run is on the
    server once with the right content, `PRAGMA integrity_check` is ok and every blob a
    row references is on disk with exactly its hash.
    """
    up, res = upstream
    uri, (mlclient, exp) = mlflow_store
    rng = random.Random(20261127)
    kills = max(20, int(20 * _scale()))
    target = f"{res.entity}/{res.project}"
    settings = local_settings(tmp_path, server)
    presync(settings, server, target)
    finished = finished_runs(up, res)
    mlflow_ids = [log_mlflow_run(mlclient, exp, f"ml-{i}", steps=100) for i in range(2)]

    expected_summary: dict[str, dict[str, Any]] = {}
    expected_files: dict[tuple[str, str], str] = {}
    local = open_store(settings)
    try:
        for n in range(200):  # a large outbox before the first start
            run_id = finished[n % len(finished)]
            edit_summary(local, res.entity, res.project, run_id, {f"edit_{n}": n * 0.5})
            expected_summary.setdefault(run_id, {})[f"edit_{n}"] = n * 0.5
    finally:
        local.close()

    server.faults = FaultPlan([Fault(route="*", kind="latency", probability=1.0,
                                     latency_ms=10 * _scale())])
    args = ["--interval", "0.5", "--project", target, "--watch-mlflow", uri,
            "--mlflow-entity", "mirror", "--mlflow-project", "from-mlflow", "--settle", "0.2",
            "--full-every", "2"]
    log = tmp_path / "daemon.log"
    killed = 0
    for i in range(kills):
        # Between runs: upstream grows, the user edits and drops files, MLflow logs runs.
        others = [r for r in res.run_ids if r not in finished]
        for run_id in (rng.choice(finished), rng.choice(others)):
            with up.session() as s:
                pk = runs.run_pk(s, res.entity, res.project, run_id)
                assert pk is not None
                count, _, hi = history.history_bounds(s, pk)
            lines = [dumps({"_step": (hi or 0) + 1 + k, "grown": i}) for k in range(100)]
            # A finished run stays finished (complete + exit code 0): its edits are not
            # held back as they would be for a run still running upstream.
            ending = {"complete": True, "exitcode": 0} if run_id in finished else {}
            apply_file_stream(up, res.entity, res.project, run_id, {"files": {
                "wandb-history.jsonl": {"offset": count, "content": lines}}, **ending})
            blob = rng.randbytes(20_000)
            store_uploaded_file(up, res.entity, res.project, run_id, f"grown/{i}.bin",
                                io.BytesIO(blob), size=len(blob))
        local = open_store(settings)
        try:
            run_id = rng.choice(finished)
            edit_summary(local, res.entity, res.project, run_id, {f"kill_{i}": i})
            expected_summary.setdefault(run_id, {})[f"kill_{i}"] = i
        finally:
            local.close()
        drop_run = rng.choice(finished)
        data = rng.randbytes(rng.choice([10_000, 2_000_000]))
        drop = settings.home / "uploads" / res.entity / res.project / drop_run / f"drop_{i}.bin"
        drop.parent.mkdir(parents=True, exist_ok=True)
        drop.write_bytes(data)
        expected_files[(drop_run, f"drop_{i}.bin")] = blobs.md5_b64(data)
        if i % 5 == 4:
            mlflow_ids.append(log_mlflow_run(mlclient, exp, f"ml-{i}", steps=100))

        proc = spawn(settings, log, *args)
        try:
            wait_for(partial(started_or_exited, settings, proc), 60, "the daemon to start")
            try:
                # The seeded moment of the kill; longer after a new MLflow run, so that
                # some kills land in the middle of an import (mlflow alone loads for ~2s).
                proc.wait(timeout=rng.uniform(2.5, 4.5) if i % 5 == 4 else
                          rng.uniform(0.2, 2.0))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                killed += 1
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert killed >= kills - 2, f"only {killed} of {kills} daemons were killed mid-run"

    server.faults = FaultPlan()
    proc = spawn(settings, log, *args)
    try:
        wait_for(lambda: running_as(settings, proc.pid), 60, "the final daemon")
        check = open_store(settings)
        try:
            def drained() -> bool:
                with check.session() as s:
                    left = imports.list_imports(s, "mlflow")
                return (active_ops(check) == 0 and len(left) == len(mlflow_ids)
                        and not pending_uploads(check, server.url)
                        and not any(p.is_file() for p in (settings.home / "uploads").rglob("*")))

            wait_for(drained, 90, "the outbox, drops and imports to drain",
                     lambda: (op_counts(check), daemon_status(settings)))
            drained_at = time.time()
            wait_for(lambda: ((daemon_status(settings)["last_pull"] or {}).get("full")
                              and (daemon_status(settings)["last_pull"] or {}).get("at", 0)
                              > drained_at
                              and (daemon_status(settings)["last_pull"] or {}).get("ok")),
                     60, "a full pull after the drain", lambda: daemon_status(settings))
        finally:
            check.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    local = open_store(settings)
    try:
        assert snapshot(local, res.entity, res.project) == \
            snapshot(up, res.entity, res.project), "the store differs from the server"
        assert not op_counts(local).get("failed") and not op_counts(local).get("conflict")
        for run_id, values in expected_summary.items():
            summary = server_summary(up, res.entity, res.project, run_id)
            assert {k: summary.get(k) for k in values} == values, run_id
        for (run_id, name), md5 in expected_files.items():
            assert server_file_md5(up, res.entity, res.project, run_id, name) == md5, name
        for rid in mlflow_ids:
            path = imported(local, uri, rid)
            assert path is not None, rid
            with up.session() as s, local.session() as ls:
                theirs = runs.get_run(s, *path)
                mine = runs.get_run(ls, *path)
                assert theirs is not None and mine is not None and theirs.pk and mine.pk
                assert list(history.iter_history(s, theirs.pk)) == \
                    list(history.iter_history(ls, mine.pk)), rid
                assert history.history_bounds(s, theirs.pk)[0] == 100
        check_store_sound(local)
    finally:
        local.close()
    log_text = log.read_text(errors="replace")
    assert "Traceback" not in log_text, log_text[-3000:]

"""`mirror ingest wandb`: offline run folders of the real SDK into the store, as local runs.

The judge is the same script logged ONLINE by the same SDK (wandb 0.31.0) into the
project's own server (``mirror serve`` in local mode): through ``mirror.Api`` the ingested
offline run must hold the same history rows (NaN, Infinity, nested dicts, a histogram,
explicit ``step=``), config, summary, files, tags, notes and state. Then the incremental
contract: a second ingest writes nothing, a log that grew adds only its new records, a
rewritten log is read again whole, a corrupt tail keeps the valid prefix. The SDK runs
once per module (both modes at the same time, in subprocesses); every test copies the
offline folder it changes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import mirror
from mirror.cli import app as cli_app
from mirror.errors import ConfigError
from mirror.ingest import OfflineIngester, txlog
from mirror.ingest import records as ingest_records
from mirror.ingest.folders import find_runs
from mirror.ingest.offline import SYSTEM, ingest_cursor
from mirror.server.testing import RunningServer, serve_in_thread
from mirror.settings import Settings, sqlite_url
from mirror.store import Store, history, imports, open_store
from mirror.store import outbox as outbox_store
from mirror.store import runs as store_runs

wandb = pytest.importorskip("wandb")

STEPS = 60
ENTITY, PROJECT = "alice", "ingest"

SCRIPT = """
import sys
import wandb

steps = int(sys.argv[1])
pause = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
run = wandb.init(project="ingest", entity="alice",
                 config={"lr": 0.1, "batch_size": 32, "model": {"layers": 3, "act": "relu"}},
                 tags=["offline", "t2"], notes="logged by the test", group="grp-a",
                 job_type="train")
with open("notes.txt", "w") as fh:
    fh.write("saved now\\n")
wandb.save("notes.txt", policy="now")
for i in range(steps):
    row = {"loss": 1.0 / (i + 1), "acc": i / steps, "nested": {"a": i, "b": {"c": i * 2}}}
    if i == 10:
        row["loss"] = float("nan")
    if i == 11:
        row["inf_metric"] = float("inf")
        row["neg"] = float("-inf")
    if i % 25 == 0:
        row["hist"] = wandb.Histogram([0.1 * (i % 7), 0.2, 0.5, 0.9], num_bins=8)
    wandb.log(row)
    if pause:
        import time
        time.sleep(pause)
wandb.log({"val_loss": 0.5}, step=steps + 10)
wandb.log({"val_acc": 0.8}, step=steps + 10)
wandb.log({"late": 1}, step=steps + 20)
run.summary["best"] = 0.25
run.summary["blob"] = "x" * 70000  # a record split over three 32 KiB blocks
run.summary.update({"extra": {"k": 1}})
run.config.update({"late_key": True})
with open("final.txt", "w") as fh:
    fh.write("saved at the end\\n")
wandb.save("final.txt", policy="end")
print("to stdout")
print("to stderr", file=sys.stderr)
print("progress 1\\rprogress 2")
run.finish()
"""


def sdk_env(folder: Path, **extra: str) -> dict[str, str]:
    """A clean environment for one SDK process writing under ``folder``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WANDB_", "MIRROR_")) and not k.lower().endswith("_proxy")}
    env.update(WANDB_DIR=str(folder), WANDB_CONFIG_DIR=str(folder / "cfg"),
               WANDB_CACHE_DIR=str(folder / "cache"), WANDB_DATA_DIR=str(folder / "data"),
               WANDB_SILENT="true", WANDB_DISABLE_GIT="true", NO_PROXY="127.0.0.1,localhost",
               **extra)
    return env


def start_sdk(folder: Path, mode: str, steps: int = STEPS, pause: float = 0.0,
              **extra: str) -> subprocess.Popen[bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "script.py").write_text(SCRIPT)
    return subprocess.Popen([sys.executable, "script.py", str(steps), str(pause)], cwd=folder,
                            env=sdk_env(folder, WANDB_MODE=mode, **extra),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]


class Logged:
    """The same script, logged offline (a folder) and online (a store behind a server)."""

    def __init__(self, offline: Path, online: Store, online_run: str) -> None:
        self.offline = offline
        self.online = online
        self.online_run = online_run


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Logged]:
    root = tmp_path_factory.mktemp("sdk")
    online = open_store(root / "online.db")
    try:
        with serve_in_thread(online, authoritative=False, entity=ENTITY) as srv:
            on = start_sdk(root / "on", "online", WANDB_BASE_URL=srv.url,
                           WANDB_API_KEY=srv.api_key)
            off = start_sdk(root / "off", "offline")
            finish(on)
            finish(off)
        [folder] = (root / "off" / "wandb").glob("offline-run-*")
        with online.session() as s:
            [rec] = store_runs.query_runs(s, ENTITY, PROJECT)
        yield Logged(folder, online, rec.run_id)
    finally:
        online.close()


def copy_run(src: Path, dst_root: Path) -> Path:
    """A copy of an offline run folder (symlinked saved files copied as files)."""
    dst = dst_root / src.name
    shutil.copytree(src, dst, symlinks=False)
    return dst


def log_file(folder: Path) -> Path:
    [log] = folder.glob("run-*.wandb")
    return log


def record_spans(log: Path) -> list[tuple[int, int]]:
    """``(start, end)`` byte offsets of every record of a log."""
    scan, frames = txlog.scan(log)
    spans, start = [], scan.end
    for frame in frames:
        spans.append((start, frame.end))
        start = frame.end
    return spans


def counts(store: Store, pk: int) -> tuple[int, int, int]:
    with store.session() as s:
        n_rows = history.history_bounds(s, pk)[0]
        n_events = history.count_events(s, pk)
        n_ops = len(outbox_store.list_ops(s, run_pk=pk))
    return n_rows, n_events, n_ops


def api_of(store: Store) -> Any:
    return mirror.Api(store=store)


VOLATILE = ("_timestamp", "_runtime")


def strip(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in VOLATILE}


def same(a: Any, b: Any) -> bool:
    """Equality where NaN equals NaN (the rows hold a logged NaN)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def download(run: Any, name: str, root: Path) -> bytes:
    run.file(name).download(root=str(root), replace=True).close()
    return (root / name).read_bytes()


# --- the acceptance: offline ingest == online logging ----------------------------------


def test_an_offline_folder_ingests_to_what_the_same_script_logs_online(
        logged: Logged, store: Store, tmp_path: Path) -> None:
    report = OfflineIngester(store).ingest([logged.offline])
    [r] = report.runs
    assert r.status == "new" and r.problem is None, r
    assert r.queued and r.state == "finished"
    run_id = r.path.split("/")[-1] if r.path else ""
    off = api_of(store).run(f"{ENTITY}/{PROJECT}/{run_id}")
    on = api_of(logged.online).run(f"{ENTITY}/{PROJECT}/{logged.online_run}")

    h_off, h_on = list(off.scan_history()), list(on.scan_history())
    assert len(h_off) == len(h_on) == STEPS + 2
    assert [r["_step"] for r in h_off] == [r["_step"] for r in h_on]
    assert h_off[-2]["_step"] == STEPS + 10 and h_off[-2]["val_loss"] == 0.5
    assert h_off[-2]["val_acc"] == 0.8  # two log(step=N) calls merged into one row
    for a, b in zip(h_off, h_on, strict=True):
        assert same(strip(a), strip(b)), (a, b)
        assert isinstance(a["_timestamp"], float) and isinstance(a["_runtime"], float)
    assert math.isnan(h_off[10]["loss"]) and h_off[11]["inf_metric"] == math.inf
    assert h_off[11]["neg"] == -math.inf and h_off[5]["nested"] == {"a": 5, "b": {"c": 10}}
    assert h_off[0]["hist"]["_type"] == "histogram" and len(h_off[0]["hist"]["bins"]) == 9

    assert off.config == on.config
    assert off.config["model"] == {"layers": 3, "act": "relu"} and off.config["late_key"]
    assert "t" in off.rawconfig["_wandb"]  # what `resume="must"` needs upstream
    skip = (*VOLATILE, "_wandb")
    s_off = {k: v for k, v in dict(off.summary).items() if k not in skip}
    s_on = {k: v for k, v in dict(on.summary).items() if k not in skip}
    assert same(s_off, s_on)
    assert s_off["best"] == 0.25 and s_off["extra"] == {"k": 1} and len(s_off["blob"]) == 70000

    for attr in ("state", "tags", "notes", "group", "job_type"):
        assert getattr(off, attr) == getattr(on, attr), attr
    assert off.state == "finished"

    f_off = {f.name: f for f in off.files()}
    f_on = {f.name: f for f in on.files()}
    assert set(f_off) == set(f_on)
    for name in ("notes.txt", "final.txt", "requirements.txt"):
        assert f_off[name].md5 == f_on[name].md5, name
    assert json.loads(download(off, "wandb-summary.json", tmp_path / "a"))["best"] == 0.25
    meta_off = json.loads(download(off, "wandb-metadata.json", tmp_path / "b"))
    meta_on = json.loads(download(on, "wandb-metadata.json", tmp_path / "c"))
    assert meta_off["program"].endswith("script.py") and meta_off.keys() == meta_on.keys()

    def console(run: Any, where: Path) -> list[str]:  # timestamps differ, text must not
        lines = download(run, "output.log", where).decode().splitlines()
        return [" ".join(p for i, p in enumerate(line.split(" "))
                         if i != (1 if line.startswith("ERROR ") else 0))
                for line in lines]

    assert console(off, tmp_path / "d") == console(on, tmp_path / "e") == [
        "to stdout", "ERROR to stderr", "progress 2"]

    ev_off = list(off.history(stream="events", pandas=False))
    ev_on = list(on.history(stream="events", pandas=False))
    assert ev_off and ev_on and ev_off[0].keys() == ev_on[0].keys()
    assert ev_off[0]["_wandb"] is True and any(k.startswith("system.") for k in ev_off[0])


def test_ingesting_twice_adds_nothing(logged: Logged, store: Store) -> None:
    ingester = OfflineIngester(store)
    [first] = ingester.ingest([logged.offline]).runs
    assert first.status == "new" and first.run_pk is not None
    before = counts(store, first.run_pk)
    cursor = ingest_cursor(store, logged.offline)
    [again] = ingester.ingest([logged.offline.parent]).runs  # the wandb/ folder this time
    assert again.status == "unchanged"
    assert (again.records, again.rows, again.events, again.files) == (0, 0, 0, 0)
    assert not again.queued
    assert counts(store, first.run_pk) == before
    assert ingest_cursor(store, logged.offline) == cursor
    assert before[2] == 1  # one create_run op queued, not two


def test_a_log_that_grew_adds_only_its_new_records(logged: Logged, tmp_path: Path) -> None:
    """Ingest the log cut mid-record, then at later cuts (one inside the record split over
    three blocks), then whole: each ingest reads only what is new, and the result equals
    one ingest of the whole log."""
    full = log_file(logged.offline).read_bytes()
    spans = record_spans(log_file(logged.offline))
    big = max(spans, key=lambda se: se[1] - se[0])  # the 70 KB summary record
    assert big[1] - big[0] > 2 * txlog.BLOCK
    cuts = [spans[30][0] + 3, big[0] + 5, (big[0] + big[1]) // 2, big[1] + 3, len(full)]
    whole = open_store(tmp_path / "whole.db")
    [ref] = OfflineIngester(whole).ingest([logged.offline]).runs
    assert ref.run_pk is not None

    folder = copy_run(logged.offline, tmp_path / "growing")
    log = log_file(folder)
    store = open_store(tmp_path / "grow.db")
    ingester = OfflineIngester(store)
    rows = records = 0
    statuses = []
    for cut in cuts:
        log.write_bytes(full[:cut])
        [r] = ingester.ingest([folder]).runs
        statuses.append(r.status)
        rows += r.rows
        records += r.records
        assert (r.problem is None) == (cut == len(full)), r.problem
        if cut < len(full):
            assert r.state == "running" and "incomplete" in (r.problem or "")
    assert statuses == ["new", "grew", "unchanged", "grew", "grew"]
    assert rows == STEPS + 2 == ref.rows  # every history row written exactly once
    assert records == ref.records == len(spans)
    assert r.state == "finished" and r.run_pk is not None
    with store.session() as s:
        got = list(history.iter_history(s, r.run_pk))
        rec = store_runs.get_run_by_pk(s, r.run_pk)
        ops = outbox_store.list_ops(s, run_pk=r.run_pk)
    with whole.session() as s:
        want = list(history.iter_history(s, ref.run_pk))
        ref_rec = store_runs.get_run_by_pk(s, ref.run_pk)
    assert same(got, want)
    assert rec is not None and ref_rec is not None
    assert same(rec.summary, ref_rec.summary) and rec.config == ref_rec.config
    assert rec.events_line_count == ref_rec.events_line_count
    assert len(ops) == 1  # the waiting create_run op covers every growth
    whole.close()
    store.close()


def test_ingesting_while_the_sdk_is_still_logging_reads_each_record_once(
        store: Store, tmp_path: Path) -> None:
    """The SDK writes its log in 32 KiB blocks (cut mid-record) while the run goes on."""
    steps = 600
    proc = start_sdk(tmp_path / "live", "offline", steps=steps, pause=0.01)
    ingester = OfflineIngester(store)
    seen: list[tuple[str, str | None, int]] = []
    try:
        while True:
            done = proc.poll() is not None
            runs = find_runs(tmp_path / "live", allow_empty=True)
            for run in runs:
                r = ingester.ingest_run(run)
                seen.append((r.status, r.state, r.rows))
            if done:
                break
            time.sleep(0.3)
    finally:
        finish(proc)
    statuses = [s for s, _, _ in seen if s not in ("empty", "unchanged")]
    assert statuses[0] == "new" and "grew" in statuses and "reread" not in statuses
    assert any(state == "running" for _, state, _ in seen)  # queryable while logging
    assert seen[-1][1] == "finished"
    assert sum(rows for _, _, rows in seen) == steps + 2  # no row written twice
    [run] = find_runs(tmp_path / "live")
    with store.session() as s:
        entry = imports.get_import(s, SYSTEM, str(run.folder), run.run_id)
        assert entry is not None
        assert history.history_bounds(s, entry.run_pk)[0] == steps + 2


def test_a_rewritten_log_is_read_again_whole(logged: Logged, store: Store,
                                             tmp_path: Path) -> None:
    folder = copy_run(logged.offline, tmp_path / "rewritten")
    log = log_file(folder)
    full = log.read_bytes()
    ingester = OfflineIngester(store)
    [first] = ingester.ingest([folder]).runs
    assert first.rows == STEPS + 2 and first.run_pk is not None
    log.write_bytes(full[:len(full) // 2])  # shorter than what was read: rewritten
    [again] = ingester.ingest([folder]).runs
    assert again.status == "reread" and 0 < again.rows < first.rows
    assert counts(store, first.run_pk)[0] == again.rows  # old rows beyond it are gone
    mid = bytearray(full)
    mid[record_spans(log_file(logged.offline))[40][0] + 9] ^= 0xFF  # same size, one byte
    log.write_bytes(bytes(mid))
    [third] = ingester.ingest([folder]).runs
    assert third.status == "reread" and third.problem and "checksum" in third.problem
    assert 0 < third.rows < first.rows
    mid[200] ^= 0xFF  # now inside the run record, the first thing a log says
    mid[record_spans(log_file(logged.offline))[40][0] + 9] ^= 0xFF
    log.write_bytes(bytes(mid))
    [fourth] = ingester.ingest([folder]).runs
    assert fourth.status == "failed" and "checksum" in (fourth.problem or "")
    assert counts(store, first.run_pk)[0] == third.rows  # a failed ingest changes nothing


def test_a_corrupt_tail_record_is_reported_and_the_valid_prefix_kept(
        logged: Logged, store: Store, tmp_path: Path) -> None:
    folder = copy_run(logged.offline, tmp_path / "corrupt")
    log = log_file(folder)
    data = bytearray(log.read_bytes())
    data[-3] ^= 0xFF  # inside the last record (the exit record)
    log.write_bytes(bytes(data))
    [r] = OfflineIngester(store).ingest([folder]).runs
    assert r.status == "new" and r.rows == STEPS + 2
    assert r.problem and "checksum mismatch" in r.problem
    assert r.state == "running"  # the exit record was the corrupt one
    result = CliRunner().invoke(cli_app, ["ingest", "wandb", str(folder), "--store",
                                          str(tmp_path / "cli.db")])
    assert result.exit_code == 0, result.output
    assert "checksum mismatch" in result.output and "kept every record" in result.output


# --- errors ---------------------------------------------------------------------------


def test_a_folder_that_is_not_an_offline_run_gives_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    db = str(tmp_path / "m.db")
    result = CliRunner().invoke(cli_app, ["ingest", "wandb", str(tmp_path / "empty"),
                                          "--store", db])
    assert result.exit_code == 1
    assert "is not an offline wandb run" in result.output and "hint:" in result.output
    result = CliRunner().invoke(cli_app, ["ingest", "wandb", str(tmp_path / "nope"),
                                          "--store", db])
    assert result.exit_code == 1 and "does not exist" in result.output
    bad = tmp_path / "offline-run-20260101_000000-abc"
    bad.mkdir()
    (bad / "run-abc.wandb").write_bytes(b"not a log at all")
    result = CliRunner().invoke(cli_app, ["ingest", "wandb", str(bad), "--store", db,
                                          "--json"])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["runs"][0]["status"] == "failed"
    assert "W&B log header" in doc["runs"][0]["problem"]


def test_without_the_wandb_package_the_error_names_the_extra(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    ingest_records.wandb_proto.cache_clear()
    monkeypatch.setitem(sys.modules, "wandb.proto", None)  # import fails as if absent
    try:
        with pytest.raises(ConfigError) as info:
            OfflineIngester(store)
        assert "wandb-mirror[wandb]" in (info.value.hint or "")
    finally:
        monkeypatch.undo()
        ingest_records.wandb_proto.cache_clear()


def test_finding_runs_names_what_was_given(logged: Logged, tmp_path: Path) -> None:
    wandb_dir = logged.offline.parent
    assert [r.folder for r in find_runs(wandb_dir)] == [logged.offline.resolve()]
    assert [r.folder for r in find_runs(wandb_dir.parent)] == [logged.offline.resolve()]
    [r] = find_runs(log_file(logged.offline))
    assert r.run_id and log_file(logged.offline).name == f"run-{r.run_id}.wandb"
    assert find_runs(tmp_path, allow_empty=True) == []


# --- the CLI and the upload -----------------------------------------------------------


def test_cli_ingests_with_a_project_then_push_uploads_the_run(
        logged: Logged, tmp_path: Path, upstream: tuple[Store, Any],
        server: RunningServer) -> None:
    db = tmp_path / "local.db"
    result = CliRunner().invoke(cli_app, ["ingest", "wandb", str(logged.offline), "--store",
                                          str(db), "--project", "team/moved", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["counts"] == {"new": 1} and doc["rows"] == STEPS + 2
    path = doc["runs"][0]["path"]
    assert path.startswith("team/moved/")
    env = {"WANDB_BASE_URL": server.url, "WANDB_API_KEY": server.api_key}
    result = CliRunner().invoke(cli_app, ["push", "--store", str(db)], env=env)
    assert result.exit_code == 0, result.output

    api = wandb.Api(overrides={"base_url": server.url}, api_key=server.api_key)
    up = api.run(path)
    local = mirror.Api(overrides={"store": str(db)}).run(path)
    assert up.state == "finished" and up.config == local.config
    assert same(list(up.scan_history()), list(local.scan_history()))
    assert {f.name: f.md5 for f in up.files()} == {f.name: f.md5 for f in local.files()}
    assert dict(up.summary["extra"]) == {"k": 1} and up.summary["best"] == 0.25
    # pushed: a second ingest of the unchanged folder queues nothing new
    result = CliRunner().invoke(cli_app, ["ingest", "wandb", str(logged.offline), "--store",
                                          str(db), "--project", "team/moved", "--json"])
    assert json.loads(result.stdout)["counts"] == {"unchanged": 1}
    store = open_store(db)
    with store.session() as s:
        entry = imports.list_imports(s, SYSTEM)
        ops = outbox_store.list_ops(s, states=["pending", "retry", "in_flight"])
    store.close()
    assert len(entry) == 1 and ops == []


# --- the daemon watch -----------------------------------------------------------------


def wait_for(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        pause.wait(0.1)


def test_the_daemon_ingests_an_offline_run_that_appears_in_a_watched_folder(
        tmp_path: Path, server: RunningServer) -> None:
    from mirror.daemon import Daemon, DaemonConfig

    home = tmp_path / "home"
    home.mkdir()
    settings = Settings(home=home, db_url=sqlite_url(home / "mirror.db"),
                        base_url=server.url, api_key=server.api_key)
    watched = tmp_path / "runs"
    watched.mkdir()
    config = DaemonConfig(interval=300, pull=False, watch_wandb=(str(watched),))
    with Daemon(settings, config) as daemon:
        proc = start_sdk(watched, "offline", steps=40, pause=0.05)
        try:
            def landed() -> Any:
                with daemon.store.session() as s:
                    found = imports.list_imports(s, SYSTEM)
                    rec = store_runs.get_run_by_pk(s, found[0].run_pk) if found else None
                return rec if rec is not None and rec.state == "finished" else None

            rec = wait_for(landed, 90, "the offline run in the store, finished")
            finish(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert rec.history_line_count == 40 + 2 and rec.source == "local"
        with daemon.store.session() as s:
            assert history.history_bounds(s, rec.pk)[0] == 40 + 2
        # and the pusher uploads it, by itself too
        up = server.store

        def uploaded() -> bool:
            with up.session() as s:
                got = store_runs.get_run(s, rec.entity, rec.project, rec.run_id)
            return got is not None and got.state == "finished"

        wait_for(uploaded, 60, "the run on the server")

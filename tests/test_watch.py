"""The daemon's building blocks, without the daemon: drop folder, watch targets, file
events, triggers, the lock, backoff, temp-file recovery and the status text.

Real files in ``tmp_path`` and a real migrated store; time is injected where a rule is
about time (the drop folder's settle window), so nothing here sleeps blindly.
"""

from __future__ import annotations

import gc
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirror.daemon.backoff import Backoff, Connectivity
from mirror.daemon.lock import DaemonLock, DaemonRunningError, holder_pid, network_filesystem
from mirror.daemon.loop import remove_stale_temp_files
from mirror.daemon.status import StatusBoard, daemon_status, format_status, status_path
from mirror.daemon.threads import RateLimitedLog, Trigger
from mirror.errors import UpstreamUnavailable
from mirror.records import RunRecord
from mirror.settings import Settings, sqlite_url
from mirror.store import Store, blobs, open_store
from mirror.store import outbox as outbox_store
from mirror.store import runs as store_runs
from mirror.watch.drops import DropFolder, is_partial_name
from mirror.watch.events import FsWatcher, Watch
from mirror.watch.targets import FileSignature, mlflow_watch_target, store_files

# Fail on any warning (style guide 14); the libraries' own deprecations stay silenced.
pytestmark = [
    pytest.mark.filterwarnings("error"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:wandb.*"),
    # watchdog's inotify observer warns (harmlessly) when a new directory's watch races
    # its recursive re-add; under "error" that would kill the observer thread.
    pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning"),
]

@pytest.fixture(autouse=True)
def _no_thread_leaks() -> Iterator[None]:
    """Every thread a test starts is joined by its end (watchdog's guard, bounded wait)."""
    before = set(threading.enumerate())
    yield
    gc.collect()
    deadline = time.monotonic() + 5
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    while leaked and time.monotonic() < deadline:
        leaked[0].join(0.1)
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leaked, f"threads leaked: {[t.name for t in leaked]}"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def add_run(store: Store, entity: str = "team", project: str = "proj",
            run_id: str = "run1") -> int:
    with store.transaction() as s:
        return store_runs.save_run(s, RunRecord(entity=entity, project=project, run_id=run_id,
                                                state="finished", config={}, summary={}))


@pytest.fixture
def drops(store: Store, tmp_path: Path) -> tuple[DropFolder, Clock, list[int]]:
    clock = Clock()
    queued: list[int] = []
    folder = DropFolder(store, tmp_path / "uploads", settle=2.0, clock=clock,
                        on_queued=lambda: queued.append(1))
    folder.root.mkdir()
    return folder, clock, queued


def file_ops(store: Store) -> list[outbox_store.OpRecord]:
    with store.session() as s:
        return outbox_store.list_ops(s, kinds=["file_put"])


# --- the drop folder ------------------------------------------------------------------------


@pytest.mark.parametrize("name,partial", [
    ("model.pt", False), ("a.tar.gz", False), ("report~final.txt", False),
    ("x.part", True), ("x.PART", True), ("video.mp4.crdownload", True), ("notes.txt~", True),
    (".hidden", True), ("~$doc.docx", True), ("upload.tmp", True), ("f.partial", True),
])
def test_partial_and_temp_names_are_never_taken(name: str, partial: bool) -> None:
    assert is_partial_name(name) is partial


def test_a_file_is_taken_only_after_it_stayed_unchanged_for_settle_seconds(
        store: Store, drops: tuple[DropFolder, Clock, list[int]]) -> None:
    folder, clock, queued = drops
    pk = add_run(store)
    path = folder.root / "team" / "proj" / "run1" / "ckpt" / "model.bin"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"a" * 1000)
    assert folder.scan() == []  # first sight
    clock.advance(1.0)
    assert folder.scan() == []  # unchanged, but not for long enough
    with open(path, "ab") as fh:  # still being written
        fh.write(b"b" * 1000)
    clock.advance(1.5)
    assert folder.scan() == [] and folder.next_ready_in() == pytest.approx(2.0)
    clock.advance(2.0)
    [outcome] = folder.scan()
    assert (outcome.status, outcome.run, outcome.name) == ("queued", "team/proj/run1",
                                                          "ckpt/model.bin")
    assert not path.exists() and not path.parent.exists(), "taken file and empty dir remain"
    assert (folder.root / "team" / "proj" / "run1").is_dir(), "the run's folder must stay"
    [op] = file_ops(store)
    assert op.run_pk == pk and op.payload["name"] == "ckpt/model.bin"
    assert op.payload["size"] == 2000
    assert op.payload["md5"] == blobs.md5_b64(b"a" * 1000 + b"b" * 1000)
    assert blobs.read_blob(store, op.payload["blob"]) == b"a" * 1000 + b"b" * 1000
    assert queued == [1] and folder.ingested == 1


def test_partial_names_wait_and_the_renamed_file_is_taken(
        store: Store, drops: tuple[DropFolder, Clock, list[int]]) -> None:
    folder, clock, _ = drops
    add_run(store)
    part = folder.root / "team" / "proj" / "run1" / "data.csv.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"1,2\n")
    for _ in range(3):
        folder.scan()
        clock.advance(5)
    assert part.exists() and file_ops(store) == []
    part.rename(part.with_name("data.csv"))
    folder.scan()
    clock.advance(2)
    assert [o.status for o in folder.scan()] == ["queued"]


def test_a_file_for_an_unknown_run_stays_and_is_reported_once(
        store: Store, drops: tuple[DropFolder, Clock, list[int]]) -> None:
    folder, clock, _ = drops
    path = folder.root / "team" / "proj" / "nosuchrun" / "notes.txt"
    path.parent.mkdir(parents=True)
    path.write_text("keep me")
    folder.scan()
    clock.advance(3)
    [outcome] = folder.scan()
    assert outcome.status == "unknown_run" and "team/proj/nosuchrun" in (outcome.reason or "")
    clock.advance(3)
    assert folder.scan() == [], "reported again without any change"
    assert folder.unknown == ["team/proj/nosuchrun/notes.txt"]
    assert path.read_text() == "keep me" and file_ops(store) == []
    # The run appears (e.g. the next pull brought it): the file goes out, the report ends.
    add_run(store, run_id="nosuchrun")
    clock.advance(3)
    assert [o.status for o in folder.scan()] == ["queued"]
    assert folder.unknown == [] and not path.exists()


def test_misplaced_and_hostile_files_are_refused_and_kept(
        store: Store, drops: tuple[DropFolder, Clock, list[int]], tmp_path: Path) -> None:
    folder, clock, _ = drops
    add_run(store)
    shallow = folder.root / "team" / "loose.txt"
    shallow.parent.mkdir(parents=True)
    shallow.write_text("x")
    link = folder.root / "team" / "proj" / "run1" / "link.txt"
    link.parent.mkdir(parents=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    link.symlink_to(secret)
    outcomes = {o.path: o for o in folder.scan()}  # a symlink is refused at first sight
    clock.advance(3)
    outcomes.update({o.path: o for o in folder.scan()})
    clock.advance(3)
    assert folder.scan() == [], "refusals are reported once"
    assert outcomes["team/loose.txt"].status == "rejected"
    assert "<entity>/<project>/<run_id>" in (outcomes["team/loose.txt"].reason or "")
    assert outcomes["team/proj/run1/link.txt"].status == "rejected"
    assert shallow.exists() and link.is_symlink() and file_ops(store) == []
    assert {r["path"] for r in folder.rejected} == {"team/loose.txt", "team/proj/run1/link.txt"}


def test_taking_is_idempotent_across_a_crash_before_the_delete(
        store: Store, drops: tuple[DropFolder, Clock, list[int]]) -> None:
    """A crash after the op's commit and before the delete leaves the file: the next scan
    must recognise it as taken (same bytes in the run's view) and only delete it."""
    folder, clock, _ = drops
    add_run(store)
    path = folder.root / "team" / "proj" / "run1" / "w.bin"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"weights")
    folder.scan()
    clock.advance(3)
    assert [o.status for o in folder.scan()] == ["queued"]
    path.write_bytes(b"weights")  # as if the delete never happened
    folder.scan()
    clock.advance(3)
    assert [o.status for o in folder.scan()] == ["already"]
    assert len(file_ops(store)) == 1 and not path.exists()
    path.write_bytes(b"weights v2")  # new bytes under the same name: a new upload
    folder.scan()
    clock.advance(3)
    assert [o.status for o in folder.scan()] == ["queued"]
    assert len(file_ops(store)) == 2


def test_a_file_that_changes_while_being_copied_is_left_for_later(
        store: Store, drops: tuple[DropFolder, Clock, list[int]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    folder, clock, _ = drops
    add_run(store)
    path = folder.root / "team" / "proj" / "run1" / "grow.log"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"line 1\n")
    folder.scan()
    clock.advance(3)
    real_put = blobs.put_stream

    def put_then_append(*args: object, **kw: object) -> blobs.BlobInfo:
        info = real_put(*args, **kw)  # type: ignore[arg-type]
        with open(path, "ab") as fh:  # the writer was not done after all
            fh.write(b"line 2\n")
        return info

    monkeypatch.setattr(blobs, "put_stream", put_then_append)
    assert [o.status for o in folder.scan()] == ["changed"]
    monkeypatch.setattr(blobs, "put_stream", real_put)
    assert file_ops(store) == [] and path.exists()
    folder.scan()
    clock.advance(3)
    assert [o.status for o in folder.scan()] == ["queued"]
    [op] = file_ops(store)
    assert blobs.read_blob(store, op.payload["blob"]) == b"line 1\nline 2\n"


# --- what to watch -----------------------------------------------------------------------


def test_mlflow_watch_targets(tmp_path: Path) -> None:
    db = tmp_path / "ml" / "mlflow.db"
    t = mlflow_watch_target(f"sqlite:///{db}")
    assert t is not None and t.kind == "sqlite" and t.path == db.parent and not t.recursive
    assert t.names == {"mlflow.db", "mlflow.db-wal", "mlflow.db-journal"}
    folder = tmp_path / "mlruns"
    for uri in (f"file://{folder}", str(folder)):
        t = mlflow_watch_target(uri)
        assert t is not None and t.kind == "file" and t.path == folder and t.recursive
    for remote in ("http://127.0.0.1:5000", "https://mlflow.example.com", "databricks",
                   "databricks://profile"):
        assert mlflow_watch_target(remote) is None, remote
    assert mlflow_watch_target("sqlite:///:memory:") is None


def test_a_commit_by_another_connection_changes_the_store_signature(
        store: Store, store_path: Path) -> None:
    files = store_files(store_path)
    before = FileSignature.of(files)
    assert FileSignature.of(files) == before
    other = open_store(store_path)
    try:
        add_run(other)
    finally:
        other.close()
    assert FileSignature.of(files) != before


# --- file events -------------------------------------------------------------------------


def test_file_events_are_hints_with_paths_and_reads_are_ignored(tmp_path: Path) -> None:
    seen: queue.Queue[str] = queue.Queue()
    watched = tmp_path / "w"
    watched.mkdir()
    (watched / "old.txt").write_text("x")
    watcher = FsWatcher()
    watcher.start([Watch(watched, seen.put, recursive=True)])
    try:
        assert watcher.alive
        (watched / "old.txt").read_text()  # a read: no hint
        (watched / "sub").mkdir()
        (watched / "sub" / "new.bin").write_bytes(b"1")
        paths: set[str] = set()
        deadline = time.monotonic() + 5
        while str(watched / "sub" / "new.bin") not in paths and time.monotonic() < deadline:
            paths.add(seen.get(timeout=max(0.01, deadline - time.monotonic())))
        assert str(watched / "sub" / "new.bin") in paths
        assert str(watched / "old.txt") not in paths
    finally:
        watcher.stop()
    assert not watcher.alive


def test_a_watch_on_a_missing_folder_falls_back_to_scans(tmp_path: Path) -> None:
    watcher = FsWatcher()
    watcher.start([Watch(tmp_path / "missing", lambda _p: None)])
    try:
        assert str(tmp_path / "missing") in watcher.unavailable
    finally:
        watcher.stop()


# --- triggers, backoff, logging -------------------------------------------------------------


def test_a_fire_before_the_wait_is_not_lost() -> None:
    t = Trigger()
    t.fire()
    assert t.wait(0) is True
    assert t.wait(0) is False


def test_wait_quiet_returns_after_the_events_stop(tmp_path: Path) -> None:
    t = Trigger()
    stop = threading.Event()

    def burst() -> None:
        for _ in range(5):
            t.fire()
            if stop.wait(0.02):
                return

    writer = threading.Thread(target=burst)
    start = time.monotonic()
    t.fire()
    writer.start()
    t.wait_quiet(0.2, 5.0)
    elapsed = time.monotonic() - start
    writer.join()
    assert 0.2 <= elapsed < 2.0
    t.fire()
    start = time.monotonic()
    t.wait_quiet(10.0, 0.1)  # bounded by max_delay
    assert time.monotonic() - start < 2.0


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    b = Backoff(initial=0.5, cap=4.0, jitter=0.0)
    assert [b.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.next_delay() == 0.5


def test_connectivity_goes_offline_once_and_wakes_listeners_when_back() -> None:
    now = [100.0]
    conn = Connectivity(Backoff(initial=1.0, cap=8.0, jitter=0.0), clock=lambda: now[0])
    events: list[str] = []
    conn.subscribe(online=lambda: events.append("online"),
                   offline=lambda: events.append("offline"))
    assert conn.probe_delay() is None
    conn.failed(UpstreamUnavailable("connection refused"))
    conn.failed(UpstreamUnavailable("connection refused"))
    assert events == ["offline"] and not conn.online and conn.since == 100.0
    assert conn.probe_delay() == 2.0  # the second failure doubled the wait
    now[0] += 2.0
    assert conn.probe_delay() == 0.0
    conn.succeeded()
    conn.succeeded()
    assert events == ["offline", "online"] and conn.online and conn.probe_delay() is None
    conn.failed("again")
    assert conn.probe_delay() == 1.0, "the backoff starts over after a success"


def test_rate_limited_log_says_the_same_thing_once_per_period(
        caplog: pytest.LogCaptureFixture) -> None:
    import logging

    log = RateLimitedLog(logging.getLogger("mirror.test"), every=3600)
    with caplog.at_level(logging.WARNING, logger="mirror.test"):
        assert log.log(logging.WARNING, "offline")
        assert not log.log(logging.WARNING, "offline")
        assert log.log(logging.WARNING, "something else")
    assert [r.getMessage() for r in caplog.records] == ["offline", "something else"]


# --- lock, recovery, status --------------------------------------------------------------


def test_the_lock_refuses_a_second_holder_naming_the_pid(tmp_path: Path) -> None:
    path = tmp_path / "mirror.db.daemon.lock"
    first = DaemonLock(path, "mirror.db")
    first.acquire()
    try:
        assert holder_pid(path) == os.getpid()
        with pytest.raises(DaemonRunningError) as info:
            DaemonLock(path, "mirror.db").acquire()
        assert info.value.pid == os.getpid()
        assert f"pid {os.getpid()}" in info.value.message and "kill" in info.value.hint
    finally:
        first.release()
    assert holder_pid(path) is None
    with DaemonLock(path) as again:
        assert again.held


def test_stale_temp_files_are_removed_but_fresh_ones_kept(tmp_path: Path) -> None:
    blobs_dir = tmp_path / "blobs"
    blobs_dir.mkdir()
    old = blobs_dir / ".incoming-old.tmp"
    fresh = blobs_dir / ".incoming-fresh.tmp"
    keep = blobs_dir / "ab"
    for p in (old, fresh):
        p.write_bytes(b"partial")
    keep.mkdir()
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    assert remove_stale_temp_files(blobs_dir, 300) == 1
    assert not old.exists() and fresh.exists() and keep.exists()


def test_status_of_a_store_without_daemon_and_its_text(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, db_url=sqlite_url(tmp_path / "mirror.db"))
    info = daemon_status(settings)
    assert info["running"] is False and info["pid"] is None and info["last_error"] is None
    assert format_status(info)[0] == "daemon: not running"
    board = StatusBoard(status_path(settings), {"pid": 4242, "started_at": 1.0})
    board.update("last_push", at=time.time() - 30, ok=False, error="2 op(s) waiting")
    board.error("push", "connection refused")
    info = daemon_status(settings)
    assert info["running"] is False and info["clean_stop"] is False, "no stopped_at: a kill"
    text = "\n".join(format_status(info))
    assert "without a clean stop" in text
    assert "last push:" in text and "2 op(s) waiting" in text
    assert "last error: [push] connection refused" in text



def test_a_store_on_a_network_file_system_is_recognised(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/sda1 / ext4 rw 0 0\n"
        "server:/export /mnt/team nfs4 rw 0 0\n"
        "//nas/share /mnt/nas\\040drive cifs rw 0 0\n"
    )
    assert network_filesystem(Path("/mnt/team/me/mirror"), mounts) == "nfs4"
    assert network_filesystem(Path("/mnt/nas drive/x"), mounts) == "cifs"
    assert network_filesystem(Path("/home/me"), mounts) is None
    assert network_filesystem(Path("/mnt/teamwork"), mounts) is None
    assert network_filesystem(tmp_path, tmp_path / "missing") is None

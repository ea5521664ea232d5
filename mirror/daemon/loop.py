"""``mirror daemon``: one long-running process per store that keeps the mirror current.

Assembly (each part in its own module)::

    DaemonLock (one per store) -> open the store -> crash-only recovery
      -> workers:  probe   (offline? capped exponential backoff, wakes everyone)
                   pull    (configured projects, every interval)
                   push    (outbox replay + imported-run uploads: on edits, drops,
                            imports, due retries, every interval)
                   edits   (another process committed: wake push)
                   drops   (upload drop folder: timer + file events)
                   mlflow  (watched MLflow stores: file events debounced + timer)
                   wandb   (watched wandb/ folders of offline runs: the same)
      -> FsWatcher (watchdog): events only *poke* the workers above

**Crash-only.** Nothing needs a clean shutdown to be correct: cursors and ops are
committed with the data they cover, pushes read back before resending, blobs are renamed
into place only when verified. So ``start`` begins with recovery instead of trusting the
previous process: stale ``blobs/.incoming-*`` temp files are removed, ops left in flight
are recovered by the first push (under the push lock, with read-back), cursors resume by
themselves. ``stop`` is a courtesy that makes exit fast (SIGTERM within 5 s).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from mirror.daemon.backoff import Backoff, Connectivity
from mirror.daemon.local import (
    DropWorker,
    EditWatcher,
    MlflowTarget,
    MlflowWorker,
    WandbOfflineWorker,
)
from mirror.daemon.lock import DaemonLock, lock_path, network_filesystem
from mirror.daemon.status import StatusBoard, log_path, read_status_file, status_path
from mirror.daemon.threads import StoppableThread
from mirror.daemon.workers import ProbeWorker, PullWorker, PushWorker, WorkerContext
from mirror.errors import ConfigError
from mirror.settings import Settings
from mirror.store import Store, open_store
from mirror.watch.drops import DropFolder
from mirror.watch.events import FsWatcher, Watch
from mirror.watch.targets import mlflow_watch_target

__all__ = ["Daemon", "DaemonConfig", "remove_stale_temp_files", "run_daemon"]

log = logging.getLogger("mirror.daemon")

STOP_GRACE = 3.5
"""Seconds ``stop`` waits for workers before giving up on them (SIGTERM must end the
process within 5 s; a worker blocked in a long HTTP transfer is abandoned, which is safe)."""


@dataclass(frozen=True)
class DaemonConfig:
    """What the daemon does and how often. Built by ``mirror daemon`` from its options.

    ``interval``: seconds between pulls, between pushes when nothing pokes the pusher, and
    between timer imports of watched MLflow stores; also the default cap of the offline
    backoff (``max_backoff``), which bounds how long resumption takes after the network
    returns. ``projects``: ``ENTITY/PROJECT`` or ``ENTITY``; empty: every project synced
    before from this server. ``settle``: seconds a dropped file must stay unchanged.
    ``watch_wandb``: folders of offline wandb runs (a ``wandb/`` folder or the folder
    holding it, watched recursively) to ingest as local runs; ``wandb_project``:
    ``ENTITY/PROJECT`` (or ``PROJECT``) for them.
    """

    interval: float = 60.0
    projects: tuple[str, ...] = ()
    watch_mlflow: tuple[str, ...] = ()
    mlflow_entity: str | None = None
    mlflow_project: str | None = None
    watch_wandb: tuple[str, ...] = ()
    wandb_project: str | None = None
    uploads_dir: Path | None = None
    max_backoff: float | None = None
    min_backoff: float | None = None
    settle: float = 2.0
    scan_interval: float | None = None
    edit_poll: float = 1.0
    full_every: int = 12
    sync_workers: int = 4
    temp_max_age: float = 300.0
    pull: bool = True
    request_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ConfigError(f"--interval must be positive, not {self.interval}",
                              hint="Use e.g. --interval 60.")
        for target in self.projects:
            parts = [p for p in target.strip("/").split("/") if p]
            if len(parts) not in (1, 2):
                raise ConfigError(f"not a project path: {target!r}",
                                  hint="Use --project ENTITY/PROJECT or --project ENTITY.")


def remove_stale_temp_files(blobs_dir: Path, max_age: float, *, now: float | None = None) -> int:
    """Delete ``.incoming-*`` temp files left in the blob cache by a killed process.

    Only files not modified for ``max_age`` seconds: a ``mirror sync`` running next to
    the daemon may be writing one right now, and its mtime moves while it does.
    """
    now = time.time() if now is None else now
    removed = 0
    try:
        candidates = list(blobs_dir.glob(".incoming-*"))
    except OSError:
        return 0
    for path in candidates:
        try:
            if now - path.stat().st_mtime >= max_age:
                path.unlink()
                removed += 1
        except OSError:
            continue
    return removed


class Daemon:
    """The daemon of one store. ``start()``, then ``stop()``; or ``with Daemon(...)``.

    ``store``/``client`` may be injected (tests, embedding); by default the daemon opens
    the store of ``settings`` and builds clients for ``settings.base_url``.
    """

    def __init__(self, settings: Settings, config: DaemonConfig | None = None, *,
                 store: Store | None = None, client: Any = None,
                 probe_client: Any = None) -> None:
        self.settings = settings
        self.config = config or DaemonConfig()
        where = str(settings.db_path) if settings.db_path else settings.db_url.split("@")[-1]
        self.lock = DaemonLock(lock_path(settings), where)
        self._store = store
        self._own_store = store is None
        self._client = client
        self._probe_client = probe_client
        self._own_clients: list[Any] = []
        self.workers: list[StoppableThread] = []
        self.watcher = FsWatcher()
        self.status = StatusBoard(status_path(settings))
        self.ctx: WorkerContext | None = None
        self.pusher: PushWorker | None = None
        self.edits: EditWatcher | None = None
        self.drops: DropWorker | None = None
        self.mlflow: MlflowWorker | None = None
        self.wandb: WandbOfflineWorker | None = None
        self.stopped = threading.Event()
        self._started = False
        self._stop_lock = threading.Lock()

    # --- start ---------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        assert self._store is not None, "the daemon is not started"
        return self._store

    def start(self) -> None:
        """Take the lock, recover, start every worker. Raises before starting any thread
        when another daemon runs (:class:`~mirror.daemon.lock.DaemonRunningError`)."""
        cfg = self.config
        self.lock.acquire()
        try:
            if self._store is None:
                self._store = open_store(self.settings)
            previous = read_status_file(self.status.path) or {}
            self._recover(previous)
            client, probe = self._clients()
            interval = cfg.interval
            cap = cfg.max_backoff if cfg.max_backoff is not None else interval
            initial = cfg.min_backoff if cfg.min_backoff is not None else min(1.0, cap / 4)
            conn = Connectivity(Backoff(initial=max(0.01, initial), cap=max(0.01, cap)))
            self.status = StatusBoard(self.status.path, {
                "pid": os.getpid(), "started_at": time.time(), "stopped_at": None,
                "store": self.store.where, "base_url": client.base_url,
                "interval": interval, "projects": list(cfg.projects),
                "watch_mlflow": list(cfg.watch_mlflow), "watch_wandb": list(cfg.watch_wandb),
                "last_ingest": previous.get("last_ingest"),
                "log_file": str(log_path(self.settings)),
                "online": True, "offline_since": None, "last_error": previous.get("last_error"),
                "last_pull": previous.get("last_pull"), "last_push": previous.get("last_push"),
                "last_import": previous.get("last_import"),
                "mlflow_entity": previous.get("mlflow_entity"),
                "next_attempt": {}, "uploads": None,
            })
            self.status.update()  # write it now: `mirror status` sees the new pid at once
            ctx = WorkerContext(
                store=self.store, settings=self.settings, client=client, probe_client=probe,
                conn=conn, status=self.status, interval=interval,
                sync_workers=cfg.sync_workers, full_every=cfg.full_every,
                projects=cfg.projects)
            self.ctx = ctx
            self._build_workers(ctx)
        except BaseException:
            self._close_resources()
            raise
        for w in self.workers:
            w.start()
        self._start_watcher()
        self._started = True
        log.info("daemon started (pid %d) for %s -> %s, interval %.1fs", os.getpid(),
                 self.store.where, ctx.client.base_url, cfg.interval)

    def _recover(self, previous: dict[str, Any]) -> None:
        if self.store.path is not None:
            fstype = network_filesystem(self.store.path.parent)
            if fstype:
                log.warning("the store %s is on a network file system (%s): SQLite's WAL and "
                            "the daemon lock need one host; keep the store on a local disk",
                            self.store.path, fstype)
        if previous and not previous.get("stopped_at"):
            log.warning("the previous daemon (pid %s) did not stop cleanly; recovering "
                        "(nothing is lost: every step is idempotent)", previous.get("pid"))
        removed = remove_stale_temp_files(self.store.blobs_dir, self.config.temp_max_age)
        if removed:
            log.info("removed %d stale temp file(s) from %s", removed, self.store.blobs_dir)
        for tmp in self.status.path.parent.glob(f".{self.status.path.name}.*.tmp"):
            try:
                tmp.unlink()
            except OSError:
                pass

    def _clients(self) -> tuple[Any, Any]:
        from mirror.upstream.client import WandbClient
        from mirror.upstream.http import RetryPolicy, make_session

        cfg = self.config
        interval = cfg.interval
        if self._client is None:
            self.settings.require_api_key()
            policy = RetryPolicy(max_attempts=4, max_elapsed=max(5.0, min(60.0, interval)),
                                 base_delay=min(0.5, interval / 4), sleep=self._sleep)
            session = make_session(self.settings, timeout=(5.0, cfg.request_timeout))
            self._client = WandbClient(session, policy=policy)
            self._own_clients.append(self._client)
        if self._probe_client is None:
            session = make_session(self.settings, timeout=(5.0, 10.0), pool_size=2)
            self._probe_client = WandbClient(session, policy=RetryPolicy(max_attempts=1))
            self._own_clients.append(self._probe_client)
        return self._client, self._probe_client

    def _sleep(self, seconds: float) -> None:
        """Retry sleeps inside HTTP calls end early when the daemon stops."""
        self.stopped.wait(seconds)

    def _build_workers(self, ctx: WorkerContext) -> None:
        cfg = self.config
        probe = ProbeWorker(ctx)
        push = PushWorker(ctx)
        self.pusher = push
        self.workers = [probe, push]
        if cfg.pull:
            pull = PullWorker(ctx)
            self.workers.append(pull)
            ctx.conn.subscribe(online=pull.poke)
        ctx.conn.subscribe(online=push.poke, offline=probe.poke)
        ctx.conn.subscribe(online=lambda: self.status.update(online=True, offline_since=None),
                           offline=lambda: self._went_offline(ctx))
        if self.store.path is not None:
            self.edits = EditWatcher(ctx, push, self.store.path, poll=cfg.edit_poll)
            self.workers.append(self.edits)
        uploads = cfg.uploads_dir or self.settings.home / "uploads"
        uploads.mkdir(parents=True, exist_ok=True)
        self.drops = DropWorker(
            ctx, DropFolder(self.store, uploads, settle=cfg.settle, on_queued=push.poke),
            cfg.scan_interval if cfg.scan_interval is not None else min(cfg.interval, 10.0))
        self.workers.append(self.drops)
        if cfg.watch_mlflow:
            targets = [MlflowTarget(uri, cfg.mlflow_entity, cfg.mlflow_project)
                       for uri in cfg.watch_mlflow]
            self.mlflow = MlflowWorker(ctx, targets, push.poke)
            self.workers.append(self.mlflow)
        if cfg.watch_wandb:
            folders = [Path(p).expanduser().resolve() for p in cfg.watch_wandb]
            self.wandb = WandbOfflineWorker(ctx, folders, push.poke, project=cfg.wandb_project)
            self.workers.append(self.wandb)

    def _went_offline(self, ctx: WorkerContext) -> None:
        """Offline, only the probe has a next attempt; pull and push wait for it."""
        self.status.update(online=False, offline_since=ctx.conn.since)
        self.status.update("next_attempt", pull=None, push=None)

    def _start_watcher(self) -> None:
        watches: list[Watch] = []
        if self.drops is not None:
            drops = self.drops
            watches.append(Watch(drops.folder.root, lambda _p: drops.poke(), recursive=True))
        if self.edits is not None and self.store.path is not None:
            edits, db = self.edits, self.store.path
            watches.append(Watch(db.parent, lambda _p: edits.poke(),
                                 names=frozenset({db.name, db.name + "-wal"})))
        if self.mlflow is not None:
            mlflow = self.mlflow
            for uri in self.config.watch_mlflow:
                target = mlflow_watch_target(uri)
                if target is not None and target.path.is_dir():
                    watches.append(Watch(target.path, lambda _p: mlflow.poke(),
                                         recursive=target.recursive, names=target.names))
                elif target is not None:
                    log.warning("MLflow store %s: %s does not exist (yet); importing on the "
                                "timer only", uri, target.path)
        if self.wandb is not None:
            worker = self.wandb
            for folder in worker.folders:  # a missing folder: the timer finds it later
                watches.append(Watch(folder, lambda _p: worker.poke(), recursive=True))
        self.watcher.start(watches)

    # --- stop ----------------------------------------------------------------------------

    def stop(self, timeout: float = STOP_GRACE) -> bool:
        """Stop every worker, wait up to ``timeout`` s; returns True if all ended.

        Resources (store, clients, lock) are released only when every worker ended; a
        caller that gets False is expected to exit the process (``run_daemon`` does).
        """
        with self._stop_lock:
            if self.stopped.is_set() or not self._started:
                self.stopped.set()  # never started: nothing to stop, no status to touch
                return not any(w.is_alive() for w in self.workers)
            self.stopped.set()
        deadline = time.monotonic() + timeout
        self.watcher.stop(timeout=min(1.0, timeout))
        for w in self.workers:
            w.stop()
        for w in self.workers:
            w.join(max(0.0, deadline - time.monotonic()))
        alive = [w.name for w in self.workers if w.is_alive()]
        self.status.update(stopped_at=time.time(), online=None, next_attempt={},
                           clean_stop=not alive)
        if alive:
            log.warning("stopping without waiting for: %s (their work is redone on the next "
                        "start)", ", ".join(alive))
            self.lock.release()
            return False
        self._close_resources()
        log.info("daemon stopped")
        return True

    def _close_resources(self) -> None:
        for c in self._own_clients:
            try:
                c.close()
            except Exception:  # closing must go on
                log.debug("closing a client failed", exc_info=True)
        self._own_clients.clear()
        if self._own_store and self._store is not None:
            self._store.close()
            self._store = None
        self.lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :meth:`stop` was called (or ``timeout``); returns whether it was."""
        return self.stopped.wait(timeout)

    def __enter__(self) -> Daemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_daemon(settings: Settings, config: DaemonConfig, *, log_to_stderr: bool = True,
               on_ready: Any = None, log_level: int = logging.INFO) -> int:
    """Run a daemon in this process until SIGTERM/SIGINT; returns the exit code.

    ``on_ready(error_message_or_None)`` is called once the daemon runs or failed to start
    (the detaching parent waits for it). After the signal, workers get
    :data:`STOP_GRACE` seconds; if one is still busy (a long transfer), the process
    exits anyway with ``os._exit``: the crash-only design makes that safe.
    """
    from mirror.daemon import logs

    remove_file_log = logs.configure_logging(log_path(settings), level=log_level)
    daemon = Daemon(settings, config)
    try:
        daemon.start()
    except Exception as exc:  # the caller prints it; the log file keeps it too
        log.error("cannot start: %s", exc)
        if on_ready is not None:
            hint = getattr(exc, "hint", None)
            text = getattr(exc, "message", None) or str(exc)
            on_ready(f"{text}\nhint: {hint}" if hint else text)
        remove_file_log()
        raise
    remove_stderr_log = logs.log_to_stderr(log_level) if log_to_stderr else (lambda: None)

    def remove_logging() -> None:
        remove_stderr_log()
        remove_file_log()

    if on_ready is not None:
        on_ready(None)
    log.info("running as pid %d; SIGTERM or Ctrl-C stops it; log: %s", os.getpid(),
             log_path(settings))
    requested = threading.Event()

    def handle(signum: int, _frame: FrameType | None) -> None:
        if requested.is_set():  # a second Ctrl-C: leave now
            os._exit(130)
        requested.set()
        log.info("received %s; stopping", signal.Signals(signum).name)

    old = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not requested.wait(0.2):  # short waits: the handler runs between them
            pass
    finally:
        clean = daemon.stop()
        for sig, handler in old.items():
            signal.signal(sig, handler)
        remove_logging()
    if not clean:
        os._exit(0)
    return 0

"""The daemon's local workers: they react to changes on this machine, offline too.

* :class:`EditWatcher`: another process (CLI, notebook) queued an edit -> wake the pusher;
* :class:`DropWorker`: the upload drop folder (:mod:`mirror.watch.drops`), on a timer and
  soon after file events;
* :class:`MlflowWorker`: watched MLflow stores, imported into the store (debounced after
  each change, and on a timer); new runs wake the pusher, which uploads them.
* :class:`WandbOfflineWorker`: watched ``wandb/`` folders of offline runs, ingested as
  local runs (new and growing ones); changed runs wake the pusher.

Same loop shape as :mod:`mirror.daemon.workers` (a stoppable thread per duty); none of
them needs the network, so they keep working while the daemon is offline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirror.daemon.threads import StoppableThread
from mirror.daemon.workers import PushWorker, WorkerContext, ops_signature
from mirror.errors import ConfigError, MirrorError
from mirror.watch.drops import DropFolder
from mirror.watch.targets import FileSignature, store_files

__all__ = ["DropWorker", "EditWatcher", "MlflowTarget", "MlflowWorker", "WandbOfflineWorker"]

log = logging.getLogger("mirror.daemon")


def _now() -> float:
    return time.time()


# --- local edits by other processes -------------------------------------------------------


class EditWatcher(StoppableThread):
    """Wakes the pusher soon after another process (CLI, notebook) queued an edit.

    The signal is the ``(mtime, size)`` of the database and its WAL, polled every
    ``poll`` seconds and hinted by file events: any commit touches them. Then one cheap
    query (op counts by state) decides: new pending ops since the pusher last looked ->
    poke it. The daemon's own commits touch the files too, but they do not create pending
    ops, so they poke nothing.
    """

    def __init__(self, ctx: WorkerContext, pusher: PushWorker, db_path: Path,
                 poll: float = 1.0) -> None:
        super().__init__("mirror-daemon-edits")
        self.ctx = ctx
        self.pusher = pusher
        self.files = store_files(db_path)
        self.poll = poll
        self.last = FileSignature.of(self.files)

    def next_delay(self) -> float | None:
        return self.poll

    def tick(self, fired: bool) -> None:
        if fired:
            self.trigger.wait_quiet(0.1, 1.0, lambda: not self.should_keep_running())
        sig = FileSignature.of(self.files)
        if sig == self.last:
            return
        self.last = sig
        signature = ops_signature(self.ctx.store)
        pending = dict(signature).get("pending", 0)
        if pending and signature != self.pusher.last_signature:
            log.debug("local edit detected (%d pending op(s)); waking the pusher", pending)
            self.pusher.poke()


# --- drop folder ---------------------------------------------------------------------------


class DropWorker(StoppableThread):
    """Scans the upload drop folder on a timer and soon after each file event."""

    def __init__(self, ctx: WorkerContext, folder: DropFolder, scan_interval: float) -> None:
        super().__init__("mirror-daemon-drops")
        self.ctx = ctx
        self.folder = folder
        self.scan_interval = scan_interval

    def next_delay(self) -> float | None:
        ready = self.folder.next_ready_in()
        if ready is None:
            return self.scan_interval
        return min(self.scan_interval, ready + 0.05)

    def tick(self, fired: bool) -> None:
        if fired:
            self.trigger.wait_quiet(0.2, 2.0, lambda: not self.should_keep_running())
        outcomes = self.folder.scan()
        if outcomes or fired:
            self.ctx.status.update("uploads", dir=str(self.folder.root),
                                   ingested=self.folder.ingested,
                                   unknown=self.folder.unknown,
                                   rejected=self.folder.rejected)


# --- MLflow --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MlflowTarget:
    """One watched MLflow tracking store and where its runs go."""

    uri: str
    entity: str | None = None
    project: str | None = None


class MlflowWorker(StoppableThread):
    """Imports watched MLflow stores into the store, debounced after each change and on a
    timer; new or changed runs wake the pusher, which uploads them (one uploader only).

    The import itself is incremental: the importer compares each run's fingerprint and
    skips unchanged runs without writing anything.
    """

    def __init__(self, ctx: WorkerContext, targets: list[MlflowTarget],
                 on_imported: Callable[[], None], *, quiet: float = 1.0,
                 max_delay: float = 10.0) -> None:
        super().__init__("mirror-daemon-mlflow")
        self.ctx = ctx
        self.targets = targets
        self.on_imported = on_imported
        self.quiet = quiet
        self.max_delay = max_delay
        self._importers: dict[str, Any] = {}
        self._entity: str | None = None
        self._ticked = False
        self.disabled: str | None = None

    def next_delay(self) -> float | None:
        return None if self.disabled else self.ctx.interval

    def on_thread_stop(self) -> None:
        for importer in self._importers.values():
            try:
                importer.close()
            except Exception:  # closing must not hide the reason we stop
                log.debug("closing an MLflow importer failed", exc_info=True)
        self._importers.clear()

    def entity(self, target: MlflowTarget) -> str | None:
        """The W&B entity runs go to: the target's, the settings', else the key's owner
        (asked once when online, remembered in the status file across restarts)."""
        if target.entity or self.ctx.settings.entity:
            return target.entity or self.ctx.settings.entity
        if self._entity is None:
            self._entity = self.ctx.key_owner()
        return self._entity

    def tick(self, fired: bool) -> None:
        if self.disabled:
            return
        if fired and self._ticked:  # debounce file events; the start-up import goes at once
            self.trigger.wait_quiet(self.quiet, self.max_delay,
                                    lambda: not self.should_keep_running())
        self._ticked = True
        started = _now()
        totals: dict[str, int] = {}
        errors: list[str] = []
        for target in self.targets:
            if not self.should_keep_running():
                return
            try:
                counts = self._import(target)
            except ImportError as exc:  # mlflow not installed: nothing will change that
                self.disabled = (f"cannot import MLflow stores: {exc} (install "
                                 "wandb-mirror[mlflow])")
                self.ctx.status.error("mlflow", self.disabled)
                log.error("%s", self.disabled)
                return
            except MirrorError as exc:
                errors.append(f"{target.uri}: {exc.message}")
                continue
            for k, v in counts.items():
                totals[k] = totals.get(k, 0) + v
        changed = totals.get("imported", 0) + totals.get("updated", 0)
        self.ctx.status.update("last_import", at=started, ok=not errors,
                               seconds=round(_now() - started, 3), counts=totals,
                               error=errors[0] if errors else None)
        if errors:
            self.ctx.status.error("mlflow", errors[0])
            self.errors.log(logging.WARNING, f"mlflow import: {errors[0]}")
        else:
            self.ctx.status.clear_error("mlflow")
        if changed:
            log.info("mlflow: %s", ", ".join(f"{n} {k}" for k, n in sorted(totals.items())))
            self.on_imported()

    def _import(self, target: MlflowTarget) -> dict[str, int]:
        from mirror.importers.mlflow import MlflowImporter
        from mirror.importers.namespace import Namespace

        entity = self.entity(target)
        if not entity:
            raise ConfigError(
                f"no W&B entity for the runs of {target.uri} (offline, and none configured)",
                hint="Pass --mlflow-entity or set WANDB_ENTITY; or wait for the server.")
        importer = self._importers.get(target.uri)
        if importer is None:
            importer = MlflowImporter(mlflow_tracking_uri=target.uri, store=self.ctx.store,
                                      settings=self.ctx.settings, entity=entity)
            self._importers[target.uri] = importer
        report = importer.import_runs(importer.collect_runs(),
                                      namespace=Namespace(entity, target.project),
                                      upload=False)
        failed = [r for r in report.runs if r.status == "failed"]
        if failed:
            self.errors.log(logging.WARNING, f"mlflow {target.uri}: {len(failed)} run(s) "
                            f"failed, e.g. {failed[0].mlflow_run_id}: {failed[0].reason}")
        return dict(report.counts())


# --- offline wandb runs ----------------------------------------------------------------------


class WandbOfflineWorker(StoppableThread):
    """Ingests the offline runs of watched ``wandb/`` folders (``mirror ingest wandb``), new
    ones and growing ones, debounced after each change and on a timer; runs that changed
    wake the pusher (the ingest queued their upload).

    A run whose log and ``files/`` look unchanged since the last tick (size and mtime) is
    not even opened; the ingester's own cursor makes any other re-ingest cheap (only the
    new records are read) and idempotent.
    """

    def __init__(self, ctx: WorkerContext, folders: list[Path], on_ingested: Callable[[], None],
                 *, project: str | None = None, quiet: float = 1.0,
                 max_delay: float = 10.0) -> None:
        super().__init__("mirror-daemon-wandb")
        self.ctx = ctx
        self.folders = folders
        self.project = project
        self.on_ingested = on_ingested
        self.quiet = quiet
        self.max_delay = max_delay
        self._seen: dict[Path, tuple[Any, ...]] = {}
        self._ingester: Any = None
        self._entity_known = False
        self._ticked = False
        self.disabled: str | None = None

    def next_delay(self) -> float | None:
        return None if self.disabled else min(self.ctx.interval, 10.0)

    def _make_ingester(self) -> Any:
        from mirror.importers.namespace import Namespace
        from mirror.ingest.offline import OfflineIngester

        namespace = Namespace.from_path(self.project) if self.project else Namespace()
        if not (namespace.entity or self.ctx.settings.entity):
            namespace = Namespace(self.ctx.key_owner(), namespace.project)
        self._entity_known = bool(namespace.entity or self.ctx.settings.entity)
        return OfflineIngester(self.ctx.store, namespace=namespace, settings=self.ctx.settings)

    def tick(self, fired: bool) -> None:
        if self.disabled:
            return
        if fired and self._ticked:  # a run still writing fires events all the time
            self.trigger.wait_quiet(self.quiet, self.max_delay,
                                    lambda: not self.should_keep_running())
        self._ticked = True
        from mirror.ingest.folders import find_runs

        started = _now()
        totals: dict[str, int] = {}
        errors: list[str] = []
        try:
            if self._ingester is None or not self._entity_known:  # offline: ask again
                self._ingester = self._make_ingester()
        except ConfigError as exc:  # the wandb extra is missing: nothing will change that
            self.disabled = f"cannot ingest offline wandb runs: {exc.message} ({exc.hint})"
            self.ctx.status.error("wandb", self.disabled)
            log.error("%s", self.disabled)
            return
        for folder in self.folders:
            try:
                found = find_runs(folder, allow_empty=True) if folder.exists() else []
            except MirrorError as exc:
                errors.append(f"{folder}: {exc.message}")
                continue
            for run in found:
                if not self.should_keep_running():
                    return
                sig = _run_signature(run.log, run.files_dir)
                if self._seen.get(run.folder) == sig:
                    continue
                outcome = self._ingester.ingest_run(run)
                totals[outcome.status] = totals.get(outcome.status, 0) + 1
                if outcome.status == "failed":
                    errors.append(f"{run.folder}: {outcome.problem}")
                elif outcome.status != "empty":
                    self._seen[run.folder] = sig
        changed = sum(totals.get(k, 0) for k in ("new", "grew", "reread"))
        if totals or errors:
            self.ctx.status.update("last_ingest", at=started, ok=not errors,
                                   seconds=round(_now() - started, 3), counts=totals,
                                   error=errors[0] if errors else None)
        if errors:
            self.ctx.status.error("wandb", errors[0])
            self.errors.log(logging.WARNING, f"wandb ingest: {errors[0]}")
        if changed:
            log.info("wandb: %s", ", ".join(f"{n} {k}" for k, n in sorted(totals.items())))
            self.on_ingested()


def _run_signature(log_file: Path, files_dir: Path) -> tuple[Any, ...]:
    """``(mtime, size)`` of the log and of every file of ``files/``: changes when the SDK
    writes anything the ingest reads."""
    paths = [log_file]
    if files_dir.is_dir():
        paths.extend(sorted(p for p in files_dir.rglob("*")))
    return (tuple(str(p) for p in paths), FileSignature.of(tuple(paths)))

"""Import MLflow runs into the local store, then upload them to W&B.

The API of W&B's removed importer, in both of its documented forms::

    from mirror.importers import Namespace
    from mirror.importers.mlflow import MlflowImporter, MlflowRun

    importer = MlflowImporter(mlflow_tracking_uri="sqlite:///mlflow.db")
    report = importer.import_runs(importer.collect_runs(),
                                  namespace=Namespace("my-team", "from-mlflow"))
    for run in report.failed:
        print(run.mlflow_run_id, run.reason)

    # a hand-picked subset, as the guide shows it
    client = mlflow.MlflowClient("sqlite:///mlflow.db")
    runs = [MlflowRun(r, client) for r in client.search_runs(["1"], "metrics.acc > 0.9")]
    importer.import_runs(runs, artifacts=False)

Two phases. **Phase 1** needs no W&B network: each run is read from MLflow and written to
the local store in ONE transaction (run row, history, files as blobs, import-map row with
the fingerprint of the source state), so queries see it at once and a crash never leaves
half a run; the same transaction queues the run's upload as an outbox ``create_run`` op.
**Phase 2** (``upload=True``, when the destination answers) hands each run to
:func:`mirror.outbox.upload_run.upload_run` and marks its op done; offline, the import
still completes, the report says the upload is pending, and ``mirror push`` (or the
daemon) sends the queued op later.

Idempotent: the W&B run id is derived from (tracking URI, MLflow run id) and kept in the
import map; a re-import of an unchanged run reads only the listing (``unchanged``, nothing
written, nothing sent); a changed run is ``updated``, refetching only the metric keys whose
latest point moved and the artifacts whose size changed. One run failing never stops the
others: every run gets a :class:`RunReport`. The mapping rules are documented in
:mod:`mirror.importers.mlflow_map`; reading MLflow in :mod:`mirror.importers.mlflow_read`.
"""

from __future__ import annotations

import mimetypes
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from mirror.errors import ConfigError, ImportError_, MirrorError
from mirror.importers import mlflow_map as mm
from mirror.importers.mlflow_map import ImportReport, RunReport
from mirror.importers.mlflow_read import MlflowSource, point_estimates
from mirror.importers.namespace import Namespace
from mirror.outbox.edits import pending_create
from mirror.outbox.upload_run import (
    UploadOutcome,
    make_upload_client,
    needs_upload,
    upload_runs,
)
from mirror.paths import run_storage_id, validate_run_file_name, wandb_time
from mirror.records import FileRecord
from mirror.settings import Settings
from mirror.store import Store, blobs, history, imports, open_store
from mirror.store import outbox as outbox_store
from mirror.store import runs as store_runs

__all__ = ["ImportReport", "MlflowImporter", "MlflowRun", "Namespace", "RunReport"]

SYSTEM = "mlflow"
_BATCH = 5000
# run fields that depend on the history rows, set once they are written
_AFTER_ROWS = ("summary", "group_name", "heartbeat_at", "updated_at", "history_line_count",
               "last_step", "history_keys", "file_count")
_WAITING_OPS = ("pending", "retry")  # a create_run op in these states will still be sent
Progress = Callable[[str, "RunReport"], None]


class MlflowRun:
    """One MLflow run to import: ``MlflowRun(run, mlflow_client)`` as in W&B's guide.

    ``run`` is an ``mlflow.entities.Run`` (from ``search_runs``/``get_run``). The client
    is kept for compatibility; the importer reads through its own client of its URI.
    """

    def __init__(self, run: Any, mlflow_client: Any = None, *, experiment: Any = None) -> None:
        self.run = run
        self.mlflow_client = mlflow_client
        self.experiment = experiment

    def run_id(self) -> str:
        """The MLflow run id."""
        return str(self.run.info.run_id)

    def display_name(self) -> str:
        return str(getattr(self.run.info, "run_name", None) or self.run_id())

    def experiment_id(self) -> str:
        return str(self.run.info.experiment_id)

    def __repr__(self) -> str:
        return f"MlflowRun({self.run_id()!r}, {self.display_name()!r})"


@dataclass(frozen=True)
class _Options:
    entity: str
    project: str | None
    artifacts: bool
    force: bool


class MlflowImporter:
    """Imports MLflow runs into a local store and uploads them to a W&B server.

    Args:
        dst_base_url, dst_api_key: the W&B server to upload to (default: the settings',
            i.e. ``WANDB_BASE_URL`` and ``WANDB_API_KEY``/``~/.netrc``).
        mlflow_tracking_uri: any URI MLflow supports; a ``MlflowClient`` of it is used,
            never the process-global tracking URI.
        mlflow_registry_uri: MLflow's model registry URI, if it differs.
        store: the local store (a :class:`~mirror.store.Store` or a path); default the
            settings' store.
        settings: default :meth:`Settings.from_env`.
        entity: W&B entity when the namespace gives none (default: ``WANDB_ENTITY``, else
            the owner of the API key, asked once). Never the MLflow user.
        key_workers: threads for metric histories (default 8 remote, 1 local).
        custom_api_kwargs: accepted for W&B's signature (it configured a ``wandb.Api``
            the MLflow path never used); ignored.
    """

    def __init__(
        self,
        dst_base_url: str | None = None,
        dst_api_key: str | None = None,
        mlflow_tracking_uri: str | None = None,
        mlflow_registry_uri: str | None = None,
        *,
        store: Store | str | Path | None = None,
        settings: Settings | None = None,
        entity: str | None = None,
        key_workers: int | None = None,
        custom_api_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if not mlflow_tracking_uri:
            raise TypeError("MlflowImporter needs mlflow_tracking_uri=")
        settings = settings or Settings.from_env()
        self._own_store = not isinstance(store, Store)
        self.store: Store = store if isinstance(store, Store) else open_store(store or settings)
        self.source = MlflowSource(mlflow_tracking_uri, mlflow_registry_uri,
                                   key_workers=key_workers)
        self.dst_base_url = (dst_base_url or settings.base_url).rstrip("/")
        self.dst_api_key = dst_api_key or settings.api_key
        self.entity = entity or settings.entity
        self.custom_api_kwargs = dict(custom_api_kwargs or {})
        self._skipped: list[RunReport] = []
        self._lock = threading.Lock()
        self._client: Any = None

    @property
    def source_uri(self) -> str:
        """The normalised tracking URI: the import map's ``source_uri``."""
        return self.source.uri

    def close(self) -> None:
        self.source.close()
        if self._client is not None:
            self._client.close()
        if self._own_store:
            self.store.close()

    def __enter__(self) -> MlflowImporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- collecting ----------------------------------------------------------------------

    def resolve_experiments(self, names_or_ids: Iterable[str]) -> list[str]:
        """Experiment ids for ids or names (``--experiment``); unknown ones raise."""
        by_id, by_name = {}, {}
        for exp in self.source.iter_experiments():
            by_id[str(exp.experiment_id)] = exp
            by_name[exp.name] = exp
        out = []
        for item in names_or_ids:
            exp = by_id.get(str(item)) or by_name.get(item)
            if exp is None:
                raise ConfigError(f"no MLflow experiment {item!r} at {self.source_uri}",
                                  hint="Give an experiment name or id that exists.")
            out.append(str(exp.experiment_id))
        return out

    def collect_runs(
        self,
        limit: int | None = None,
        experiment_ids: Iterable[str] | None = None,
        filter_string: str | None = None,
        include_deleted: bool = False,
    ) -> Iterator[MlflowRun]:
        """Every run of every experiment (or of ``experiment_ids``), paging to the end.

        Deleted runs, and runs of deleted experiments, are yielded only with
        ``include_deleted``; otherwise each one is noted and reported as ``skipped`` by
        the next :meth:`import_runs`, so none disappears without a trace.
        """
        if experiment_ids is None:
            exps = {str(e.experiment_id): e for e in self.source.iter_experiments()}
        else:
            exps = {str(i): self.source.experiment(str(i)) for i in experiment_ids}
        yielded = 0
        for run in self.source.iter_runs(sorted(exps), filter_string=filter_string):
            exp = exps.get(str(run.info.experiment_id))
            why = None
            if getattr(exp, "lifecycle_stage", "active") == "deleted":
                why = "its MLflow experiment is deleted"
            elif run.info.lifecycle_stage == "deleted":
                why = "deleted in MLflow"
            if why and not include_deleted:
                with self._lock:
                    self._skipped.append(RunReport(
                        run.info.run_id, "skipped", f"{why} (include_deleted=False)",
                        run_name=getattr(run.info, "run_name", None),
                        experiment_id=str(run.info.experiment_id)))
                continue
            if limit is not None and yielded >= limit:
                return
            yielded += 1
            yield MlflowRun(run, None, experiment=exp)

    # --- importing -----------------------------------------------------------------------

    def import_runs(
        self,
        runs: Iterable[MlflowRun | Any],
        artifacts: bool = True,
        namespace: Namespace | None = None,
        upload: bool = True,
        max_workers: int | None = None,
        *,
        parallel: bool = True,
        force: bool = False,
        remap_deleted: bool = False,
        progress: Progress | None = None,
    ) -> ImportReport:
        """Import ``runs`` into the store, then (``upload``) upload them; one report each.

        ``max_workers`` runs are imported at once (default 4 for remote tracking
        servers, 1 for local stores, where threads only contend). ``force`` refetches
        runs whose fingerprint did not change. ``remap_deleted`` gives a new W&B id to
        runs W&B refuses because their id was deleted there.
        """
        ns = namespace or Namespace()
        entity = ns.entity or self.entity or self._viewer_entity(upload)
        opts = _Options(entity, ns.project or None, artifacts, force)
        workers = max_workers or (4 if self.source.remote else 1)
        if not parallel:
            workers = 1
        items = (r if isinstance(r, MlflowRun) else MlflowRun(r) for r in runs)
        reports = self._run_all(items, opts, workers, progress)
        with self._lock:
            reports = self._skipped + reports
            self._skipped = []
        if upload:
            self._upload_all(reports, remap_deleted, progress)
        return ImportReport(reports)

    def _import_run(self, run: MlflowRun, *, artifacts: bool = True,
                    namespace: Namespace | None = None, config: Any = None) -> RunReport:
        """One run, no upload (W&B's importer had this private method; users called it)."""
        return self.import_runs([run], artifacts=artifacts, namespace=namespace,
                                upload=False).runs[-1]

    def _run_all(self, items: Iterator[MlflowRun], opts: _Options, workers: int,
                 progress: Progress | None) -> list[RunReport]:
        """Import in windows of runs: memory stays bounded, and over HTTP the new runs of a
        window get their histories in bulk (one request per key for many runs) first."""
        def one(run: MlflowRun) -> RunReport:
            report = self._import_safely(run, opts)
            if progress is not None:
                progress("import", report)
            return report

        out: list[RunReport] = []
        pool = ThreadPoolExecutor(workers, thread_name_prefix="mirror-mlflow-runs") \
            if workers > 1 else None
        # the next window's bulk fetch runs while this one is written: the MLflow server
        # works on its queries while we encode and store rows (at most two windows of
        # histories are held)
        ahead = ThreadPoolExecutor(1, thread_name_prefix="mirror-mlflow-prefetch") \
            if self.source.bulk else None

        def start(window: list[MlflowRun]) -> Future[None] | None:
            if not window:
                return None
            if ahead is None:
                self._prefetch(window)
                return None
            return ahead.submit(self._prefetch, window)

        try:
            window = self.source.next_window(items, workers, lambda r: r.run)
            fetching = start(window)
            while window:
                if fetching is not None:
                    fetching.result()
                following = self.source.next_window(items, workers, lambda r: r.run)
                fetching = start(following)
                out.extend(pool.map(one, window) if pool else map(one, window))
                self.source.drop_cached(r.run_id() for r in window)
                window = following
        finally:
            if ahead is not None:
                ahead.shutdown(wait=True, cancel_futures=True)
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            self.source.clear_cache()
        return out

    def _prefetch(self, window: list[MlflowRun]) -> None:
        if not self.source.bulk:
            return
        with self.store.session() as s:  # new runs need every key; re-imports decide later
            new = [r for r in window
                   if imports.get_import(s, SYSTEM, self.source_uri, r.run_id()) is None]
        self.source.prefetch([(r.run_id(), point_estimates(r.run)) for r in new])

    def _import_safely(self, run: MlflowRun, opts: _Options) -> RunReport:
        start = time.monotonic()
        try:
            report = self._import_one(run, opts)
        except MirrorError as exc:
            report = RunReport(run.run_id(), "failed", exc.message,
                               run_name=run.display_name(), experiment_id=run.experiment_id())
        except Exception as exc:  # a bug or an unexpected library error: never silent
            report = RunReport(run.run_id(), "failed", f"{type(exc).__name__}: {exc}",
                               run_name=run.display_name(), experiment_id=run.experiment_id())
        report.seconds = time.monotonic() - start
        return report

    def _import_one(self, mrun: MlflowRun, opts: _Options) -> RunReport:
        src = self.source.snapshot(mrun.run, mrun.experiment)
        project = opts.project or mm.project_for_experiment(src.experiment_name,
                                                            src.experiment_id)
        root = self.source.root_of(src.run_id, src.parent_run_id)
        with self.store.session() as s:
            entry = imports.get_import(s, SYSTEM, self.source_uri, src.run_id)
            existing = store_runs.get_run_by_pk(s, entry.run_pk) if entry else None
            parent_wid = self._wandb_id(s, src.parent_run_id)
            root_wid = self._wandb_id(s, root)
            run_id = existing.run_id if existing else self._new_run_id(
                src.run_id, opts.entity, project, session=s)
        listing = self.source.list_tree(src.artifact_uri, run_id=src.run_id) \
            if opts.artifacts else None
        models = self.source.logged_models(src) if opts.artifacts else None
        fingerprint = imports.fingerprint(mm.fingerprint_doc(
            src, entity=opts.entity, project=project, artifacts=listing, models=models,
            root=root_wid))
        report = RunReport(src.run_id, "imported", run_name=src.run_name,
                           experiment_id=src.experiment_id,
                           path=f"{opts.entity}/{project}/{run_id}")
        if existing is not None:
            report.run_pk = existing.pk
            if entry is not None and entry.fingerprint == fingerprint and not opts.force:
                report.status = "unchanged"
                return report
            report.status = "updated"

        # metric histories: only keys whose latest point moved are fetched again
        old: dict[str, list[mm.Point]] = {}
        if existing is not None and existing.pk is not None and not opts.force:
            old = self._local_points(existing.pk)
        fetch = [k for k in src.latest if not mm.same_latest(old.get(k), src.latest[k])]
        series = {k: v for k, v in old.items() if k in src.latest and k not in fetch}
        series.update(self.source.metric_histories(src.run_id, fetch))

        wanted = mm.wanted_files(src, listing or [], models or [])
        with self.store.session() as s:
            have = {f.name: f for f in store_runs.list_files(s, existing.pk)} \
                if existing is not None and existing.pk is not None else {}
        new_files = self._download(wanted, have, src.run_id, report)
        runtime = mm.runtime_seconds(src, max(
            (p.timestamp for pts in series.values() for p in pts), default=None))
        meta = blobs.put_bytes(self.store, mm.metadata_json(src, runtime), record=False)
        new_files[mm.METADATA_FILE] = (meta, "application/json")
        section = mm.mlflow_section(src, self.source_uri, parent_wid, root_wid, models or [])
        config = mm.build_config(src, section)
        # the points file is spooled to an anonymous temp file (gone when closed)
        with tempfile.TemporaryFile() as points_fh, self.store.transaction() as s:
            report.run_pk = self._write(
                s, src, opts, project, run_id, existing, series, config, runtime, points_fh,
                new_files, set(wanted) | {mm.METADATA_FILE}, fingerprint, report)
        return report

    def _write(self, s: Any, src: mm.SourceRun, opts: _Options, project: str, run_id: str,
               existing: Any, series: dict[str, list[mm.Point]], config: dict[str, Any],
               runtime: float | None, points_fh: Any,
               new_files: dict[str, tuple[blobs.BlobInfo, str]], keep: set[str],
               fingerprint: str, report: RunReport) -> int:
        """Everything of one run, in the caller's single transaction."""
        if existing is not None and (existing.entity, existing.project) != (opts.entity,
                                                                            project):
            imports.move_run(s, existing.pk, entity=opts.entity, project=project)
        stats = mm.Projection()
        prelim = mm.build_record(src, entity=opts.entity, project=project, run_id=run_id,
                                 config=config, summary={}, group=None, projection=stats,
                                 file_count=0)
        pk = store_runs.save_run(s, prelim)
        history.delete_history(s, pk)

        def extra(line: str) -> None:
            points_fh.write(line.encode("utf-8", "surrogatepass") + b"\n")

        rows = mm.project_history(series, src.start_time, extra, stats)
        while batch := list(islice(rows, _BATCH)):
            history.save_history(s, pk, batch)
        if stats.extra_points:
            points_fh.seek(0)
            info = blobs.put_stream(self.store, points_fh, record=False)
            new_files[mm.POINTS_FILE] = (info, "application/x-ndjson")
            keep.add(mm.POINTS_FILE)
        stamp = wandb_time(time.time())
        for name, (info, mimetype) in new_files.items():
            blobs.record_blob(s, info)
            store_runs.save_file(s, pk, FileRecord(
                name=name, size_bytes=info.size, md5=info.md5_b64, mimetype=mimetype,
                updated_at=stamp, blob_hash=info.hash))
        file_count = 0
        for f in store_runs.list_files(s, pk):
            managed = f.name.startswith("mlflow/") or f.name == mm.METADATA_FILE
            if managed and f.name not in keep:
                store_runs.delete_file(s, pk, f.name)  # gone from MLflow
            else:
                file_count += 1
        summary = mm.build_summary(src, stats, runtime)
        group = config[mm.CONFIG_KEY]["value"]["root_wandb_run_id"]
        rec = mm.build_record(src, entity=opts.entity, project=project, run_id=run_id,
                              config=config, summary=summary, group=group, projection=stats,
                              file_count=file_count)
        store_runs.update_run(s, pk, **{k: getattr(rec, k) for k in _AFTER_ROWS})
        imports.put_import(s, SYSTEM, self.source_uri, src.run_id, pk, fingerprint)
        _queue_upload(s, pk)
        report.rows, report.points, report.files = stats.rows, stats.points, file_count
        return pk

    def _download(self, wanted: dict[str, tuple[str, str, int | None]],
                  have: dict[str, FileRecord], run_id: str,
                  report: RunReport) -> dict[str, tuple[blobs.BlobInfo, str]]:
        """Fetch new or resized files into the blob cache; the rows that reference them
        are written later, in the run's transaction."""
        todo = []
        for name, (root, path, size) in sorted(wanted.items()):
            old = have.get(name)
            if (old is not None and old.blob_hash and size is not None
                    and old.size_bytes == size and blobs.has_blob(self.store, old.blob_hash)):
                continue
            try:
                todo.append((validate_run_file_name(name), root, path))
            except MirrorError as exc:
                report.warnings.append(f"{path}: skipped: {exc.message}")
        out: dict[str, tuple[blobs.BlobInfo, str]] = {}
        if not todo:
            return out
        with closing(self.source.iter_downloads(todo, run_id=run_id)) as downloads:
            for name, local in downloads:
                with open(local, "rb") as fh:
                    info = blobs.put_stream(self.store, fh, record=False)
                kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
                out[name] = (info, kind)
        return out

    def _local_points(self, run_pk: int) -> dict[str, list[mm.Point]]:
        """Every point of a stored run, rebuilt from its rows and its points file."""
        with self.store.session() as s:
            rows = list(history.iter_history(s, run_pk))
            f = store_runs.get_file(s, run_pk, mm.POINTS_FILE)
        lines: list[bytes] = []
        if f is not None and f.blob_hash and blobs.has_blob(self.store, f.blob_hash):
            lines = blobs.read_blob(self.store, f.blob_hash).splitlines()
        return mm.points_from_history(rows, lines)

    def _wandb_id(self, s: Any, mlflow_run_id: str | None) -> str | None:
        """The W&B id a (possibly not yet imported) MLflow run has or will have."""
        if not mlflow_run_id:
            return None
        entry = imports.get_import(s, SYSTEM, self.source_uri, mlflow_run_id)
        rec = store_runs.get_run_by_pk(s, entry.run_pk) if entry else None
        return rec.run_id if rec else mm.wandb_run_id(self.source_uri, mlflow_run_id)

    def _new_run_id(self, mlflow_run_id: str, entity: str, project: str,
                    first_salt: int = 0, *, session: Any = None) -> str:
        """The deterministic id, salted only if another local run already holds it."""
        if session is None:
            with self.store.session() as s:
                return self._new_run_id(mlflow_run_id, entity, project, first_salt, session=s)
        for n in range(first_salt, first_salt + 100):
            candidate = mm.wandb_run_id(self.source_uri, mlflow_run_id,
                                        f"remap-{n}" if n else "")
            if imports.run_id_taken(session, entity, project, candidate) is None:
                return candidate
        raise ImportError_(f"no free W&B run id for {mlflow_run_id}",
                           source_run_id=mlflow_run_id)

    def remap_run(self, mlflow_run_id: str) -> str:
        """Give an imported run a new W&B id (its old one was deleted on W&B); returns it."""
        with self.store.session() as s:
            entry = imports.get_import(s, SYSTEM, self.source_uri, mlflow_run_id)
            rec = store_runs.get_run_by_pk(s, entry.run_pk) if entry else None
        if entry is None or rec is None:
            raise ImportError_(f"MLflow run {mlflow_run_id} was never imported from "
                               f"{self.source_uri}", source_run_id=mlflow_run_id)
        new_id = self._new_run_id(mlflow_run_id, rec.entity, rec.project, first_salt=1)
        with self.store.transaction() as s:
            imports.move_run(s, entry.run_pk, entity=rec.entity, project=rec.project,
                             run_id=new_id)
            store_runs.update_run(s, entry.run_pk,
                                  storage_id=run_storage_id(rec.entity, rec.project, new_id))
        return new_id

    # --- uploading -----------------------------------------------------------------------

    def wandb_client(self) -> Any:
        """The client of the destination (short retry budget: an import should not hang)."""
        if self._client is None:
            self._client = make_upload_client(self.dst_base_url, self.dst_api_key)
        return self._client

    def _viewer_entity(self, online: bool) -> str:
        why = "upload is off"
        if online:
            try:
                entity = self.wandb_client().viewer().entity
                if entity:
                    return str(entity)
                why = "the server names no entity for this key"
            except MirrorError as exc:
                why = exc.message
        raise ConfigError(f"no W&B entity to import into ({why})",
                          hint="Pass Namespace(entity, project) / --entity, or set "
                          "WANDB_ENTITY.")

    def _upload_all(self, reports: list[RunReport], remap_deleted: bool,
                    progress: Progress | None) -> None:
        by_pk = {r.run_pk: r for r in reports
                 if r.run_pk is not None and r.status not in ("failed", "skipped")}

        def remap(pk: int) -> bool:
            r = by_pk[pk]
            new_id = self.remap_run(r.mlflow_run_id)
            r.path = "/".join([*(r.path or "//").split("/")[:2], new_id])
            r.warnings.append(f"remapped to {new_id}: its old id was deleted on W&B")
            return True

        def done(outcome: UploadOutcome) -> None:
            r = by_pk[outcome.run_pk]
            r.upload, r.upload_reason = outcome.status, outcome.reason
            if outcome.status in ("uploaded", "unchanged"):
                self._ack_upload(outcome.run_pk)
            if progress is not None and outcome.status != "unchanged":
                progress("upload", r)

        try:
            client = self.wandb_client()
        except ConfigError as exc:  # no API key: fail what needed sending, say why
            for pk, r in by_pk.items():
                needed = needs_upload(self.store, self.dst_base_url, pk)
                r.upload = "failed" if needed else "unchanged"
                r.upload_reason = f"{exc.message} ({exc.hint})" if needed else None
            return
        upload_runs(self.store, client, list(by_pk), on_done=done,
                    remap=remap if remap_deleted else None)

    def _ack_upload(self, run_pk: int) -> None:
        """The run is upstream at its current state: its queued ``create_run`` op is done
        (``mirror push`` would find nothing left to send for it)."""
        with self.store.transaction() as s:
            ops = outbox_store.list_ops(s, run_pk=run_pk, kinds=["create_run"])
            outbox_store.mark_many(s, [outbox_store.Mark(op.id, "done") for op in ops
                                       if op.state in _WAITING_OPS])


def _queue_upload(session: Any, run_pk: int) -> None:
    """Queue the run's upload as an outbox ``create_run`` op, in the import's own
    transaction, unless one is already waiting: ``mirror push`` and the daemon send it
    whenever the destination answers (``import_runs(upload=True)`` sends it at once when
    it can, then marks it done)."""
    op = pending_create(session, run_pk)
    if op is None or op.state not in _WAITING_OPS:
        outbox_store.enqueue(session, run_pk, "create_run", {})

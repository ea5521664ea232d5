"""Ingest offline wandb runs (``WANDB_MODE=offline`` folders) into the store as local runs.

Each offline run becomes a *local* run (``source="local"``), exactly like a run the SDK
logs into ``mirror serve``: in the store at once, queryable through ``mirror.Api`` and the
server, and queued as a ``create_run`` outbox op that ``mirror push`` (or the daemon)
uploads with :func:`mirror.outbox.upload_run.upload_run`. The run keeps the SDK's run id,
entity and project (``--project`` overrides them).

**Idempotent and incremental.** A run's ingest cursor (a ``sync_cursor`` row, stream
``ingest:<folder>``) records how many bytes of the transaction log were consumed, at a
record boundary, and the sha256 of exactly those bytes; the import map
(``source_system="wandb-offline"``) points the folder's run at the local run, with
``<bytes>:<sha256>`` as its fingerprint (which is what tells the uploader whether anything
is new). On the next ingest:

* same size, same prefix digest, same files: **unchanged**, nothing written;
* the log grew and its consumed prefix is unchanged: only the records after the cursor
  are read and written (**grew**): history rows are upserts keyed by ``_step``, events
  continue at the next sequence number, summary/config updates fold into the stored run;
* the prefix differs (the log was rewritten): the run's history and events are dropped
  and the whole log is read again (**reread**).

Everything of one ingest (run row, rows, files, import map, cursor, outbox op) is written
in ONE transaction, so a crash leaves the previous ingest intact and the next one redoes
the work. A corrupt or truncated tail record stops the scan at the last good record: the
valid prefix is kept, the report says what is wrong with the tail, and the cursor stays
before it so a tail the SDK was still writing is read once complete.

Files: those of the folder's ``files/`` that ``files`` records name (``requirements.txt``,
``wandb.save`` files, media), as the SDK's sender uploads them, plus the files the sender
would have produced from records: ``wandb-metadata.json`` (environment records),
``config.yaml``, ``wandb-summary.json`` and ``output.log`` (console records, in the
online stream's line format).
"""

from __future__ import annotations

import fnmatch
import json
import mimetypes
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mirror.errors import ImportError_, MirrorError
from mirror.importers.namespace import Namespace
from mirror.ingest import txlog
from mirror.ingest.folders import OfflineRun, find_runs
from mirror.ingest.image import RunImage
from mirror.ingest.records import parser
from mirror.outbox.edits import pending_create
from mirror.paths import run_storage_id, validate_run_file_name, wandb_time
from mirror.records import FileRecord, RunRecord
from mirror.settings import Settings
from mirror.store import Store, blobs, history, imports, syncstate
from mirror.store import outbox as outbox_store
from mirror.store import runs as store_runs
from mirror.store.codec import dumps_wire

__all__ = ["SYSTEM", "IngestReport", "OfflineIngester", "RunIngest", "ingest_cursor"]

SYSTEM = "wandb-offline"
"""``import_map.source_system`` of ingested offline runs."""
CURSOR_BASE = "wandb-offline"
"""``sync_cursor.base_url`` of ingest cursors (entity and project are empty)."""
_BATCH = 5000
_METADATA, _CONFIG, _SUMMARY, _OUTPUT = ("wandb-metadata.json", "config.yaml",
                                         "wandb-summary.json", "output.log")
_WAITING_OPS = ("pending", "retry")
Progress = Callable[["RunIngest"], None]


@dataclass
class RunIngest:
    """What one ingest did to one offline run.

    ``status``: new | grew | reread | unchanged | empty (no complete run record yet) |
    skipped (its id belongs to a run that did not come from this folder) | failed (also:
    the log is corrupt before its run record).
    """

    folder: str
    run_id: str | None
    status: str
    path: str | None = None  # entity/project/run_id in the store
    records: int = 0  # records read by this ingest
    rows: int = 0  # history rows written
    events: int = 0  # system-metrics rows written
    files: int = 0  # files written (new or changed)
    state: str | None = None
    problem: str | None = None  # why it failed or was skipped, or what is wrong at the tail
    queued: bool = False  # a create_run op was queued for `mirror push`
    ignored: dict[str, int] = field(default_factory=dict)  # record kinds not ingested
    run_pk: int | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class IngestReport:
    """Every run of one ``ingest`` call; ``ok`` when none failed."""

    runs: list[RunIngest] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(r.status == "failed" for r in self.runs)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.runs:
            out[r.status] = out.get(r.status, 0) + 1
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "counts": self.counts(),
                "records": sum(r.records for r in self.runs),
                "rows": sum(r.rows for r in self.runs),
                "runs": [r.as_dict() for r in self.runs]}


def ingest_stream(source_uri: str) -> str:
    """The sync-cursor stream of one offline run folder."""
    return f"ingest:{source_uri}"


def ingest_cursor(store: Store, folder: str | Path) -> dict[str, Any] | None:
    """The ingest cursor of a run folder, if it was ingested."""
    with store.session() as s:
        value = syncstate.get_cursor(s, CURSOR_BASE, "", "",
                                     ingest_stream(str(Path(folder).resolve())))
    return value if isinstance(value, dict) else None


def _unwrap(config: dict[str, Any] | None) -> dict[str, Any]:
    """W&B's stored ``{"k": {"value": v}}`` config as plain values."""
    return {k: (v["value"] if isinstance(v, dict) and "value" in v else v)
            for k, v in (config or {}).items()}


def _wrap(config: dict[str, Any]) -> dict[str, Any]:
    return {k: {"value": v} for k, v in config.items()}


def _file_signatures(run: OfflineRun) -> dict[str, list[int]]:
    """``name -> [size, mtime_ns]`` of every file under the run's ``files/``."""
    out: dict[str, list[int]] = {}
    root = run.files_dir
    if not root.is_dir():
        return out
    for p in sorted(root.rglob("*")):
        try:
            if not p.is_file():
                continue
            st = p.stat()
        except OSError:
            continue
        out[p.relative_to(root).as_posix()] = [st.st_size, st.st_mtime_ns]
    return out


@dataclass
class _Plan:
    """What the store says about a run before this ingest."""

    entry: imports.ImportEntry | None
    existing: RunRecord | None
    cursor: dict[str, Any]
    start: int  # first byte to read
    prefix: Any  # sha256 of [0, start)
    status: str


class OfflineIngester:
    """Ingests offline run folders into ``store``.

    ``namespace``: where the runs go (either part may be empty: the run's own entity and
    project, else ``settings.entity``/``settings.project``, else "uncategorized" for the
    project). ``queue_upload``: queue a ``create_run`` op for every new or changed run, so
    that ``mirror push`` uploads it.
    """

    def __init__(self, store: Store, *, namespace: Namespace | None = None,
                 settings: Settings | None = None, queue_upload: bool = True) -> None:
        self.store = store
        self.namespace = namespace or Namespace()
        self.default_entity = settings.entity if settings else None
        self.default_project = settings.project if settings else None
        self.queue_upload = queue_upload
        self._parse = parser()  # fails at once, with the extra's name, without wandb

    def ingest(self, paths: Iterable[str | Path], progress: Progress | None = None,
               ) -> IngestReport:
        """Ingest every offline run ``paths`` name; a bad path fails the whole call (the
        user named it), a failing run only itself."""
        found: list[OfflineRun] = []
        for p in paths:
            found.extend(find_runs(p))
        report = IngestReport()
        for run in dict.fromkeys(found):
            outcome = self.ingest_run(run)
            report.runs.append(outcome)
            if progress is not None:
                progress(outcome)
        return report

    def ingest_run(self, run: OfflineRun) -> RunIngest:
        """Ingest one run folder; never raises for the run's own problems."""
        started = time.monotonic()
        out = RunIngest(str(run.folder), run.run_id, "failed")
        try:
            self._ingest(run, out)
        except MirrorError as exc:
            out.status, out.problem = "failed", exc.message
        except OSError as exc:
            out.status, out.problem = "failed", f"{type(exc).__name__}: {exc}"
        out.seconds = time.monotonic() - started
        return out

    # --- one run -------------------------------------------------------------------------

    def _plan(self, run: OfflineRun) -> _Plan:
        source = str(run.folder)
        with self.store.session() as s:
            entry = imports.get_import(s, SYSTEM, source, run.run_id)
            cursor = syncstate.get_cursor(s, CURSOR_BASE, "", "", ingest_stream(source))
            existing = store_runs.get_run_by_pk(s, entry.run_pk) if entry else None
        cursor = cursor if isinstance(cursor, dict) else {}
        offset = int(cursor.get("offset") or 0)
        if existing is None or not offset:
            return _Plan(entry, existing, {}, 0, None, "new")
        size = run.log.stat().st_size
        if size >= offset:
            prefix, read = txlog.prefix_digest(run.log, offset)
            if read == offset and prefix.hexdigest() == cursor.get("sha256"):
                return _Plan(entry, existing, cursor, offset, prefix, "grew")
        return _Plan(entry, existing, {}, 0, None, "reread")

    def _ingest(self, run: OfflineRun, out: RunIngest) -> None:
        plan = self._plan(run)
        files_now = _file_signatures(run)
        if (plan.status == "grew" and run.log.stat().st_size == plan.start
                and files_now == plan.cursor.get("files")):
            out.status, out.state = "unchanged", plan.existing.state if plan.existing else None
            out.run_pk = plan.entry.run_pk if plan.entry else None
            out.path = plan.existing.path if plan.existing else None
            return
        image = RunImage()
        if plan.status == "grew":
            assert plan.existing is not None
            self._restore(image, plan.existing, plan.cursor)
        scan, frames = txlog.scan(run.log, plan.start, plan.prefix)
        parse = self._parse
        if plan.status == "grew":
            first = next(frames, None)
            assert plan.existing is not None
            if first is None and files_now == plan.cursor.get("files"):
                # only a partial (or corrupt) tail was added: nothing to write yet
                out.status, out.problem = "unchanged", scan.problem
                out.run_pk, out.state = plan.existing.pk, plan.existing.state
                out.path = plan.existing.path
                return
            frames = _chain(first, frames)
        # The run record comes second in every log: read up to it before writing.
        while image.run_id is None:
            frame = next(frames, None)
            if frame is None:
                break
            image.apply(parse(frame.data))
        if image.run_id is None:  # nothing to ingest; a corrupt start is a failure
            out.status = "empty" if scan.problem is None or scan.truncated else "failed"
            out.problem = scan.problem or "the log holds no run record yet"
            out.records = scan.records
            return
        if image.run_id != run.run_id:
            raise ImportError_(f"{run.log} is the log of run {image.run_id!r}, not "
                               f"{run.run_id!r} as its name says", source_run_id=run.run_id)
        entity, project = self._target(image, plan.existing)
        with self.store.transaction() as s:
            pk = self._prepare_row(s, plan, image, entity, project, out)
            if pk is None:
                return
            if plan.status == "reread":
                history.delete_history(s, pk)
                history.replace_events(s, pk, [])
            events_at = image.events_count
            for frame in frames:
                image.apply(parse(frame.data))
                if len(image.new_history) >= _BATCH:
                    out.rows += history.save_history(s, pk, image.take_history())
                if len(image.new_events) >= _BATCH:
                    n = history.save_events(s, pk, image.take_events(), start_seq=events_at)
                    out.events += n
                    events_at += n
            out.rows += history.save_history(s, pk, image.take_history())
            out.events += history.save_events(s, pk, image.take_events(), start_seq=events_at)
            out.records = scan.records
            out.problem = scan.problem
            image.fold_summary()
            disk = self._put_files(run, files_now, image.saved, plan)
            out.files = self._save_files(s, pk, image, disk, plan)
            self._finish_row(s, pk, run, image)
            fingerprint = imports.fingerprint({
                "log": [scan.end, scan.digest],
                "files": {f.name: f.md5 for f in store_runs.list_files(s, pk)}})
            imports.put_import(s, SYSTEM, str(run.folder), run.run_id, pk, fingerprint)
            syncstate.set_cursor(s, CURSOR_BASE, "", "", ingest_stream(str(run.folder)), {
                "offset": scan.end, "records": (plan.cursor.get("records") or 0)
                + scan.records, "sha256": scan.digest, "files": files_now,
                "carry": image.carry(), "ingested_at": time.time(),
            })
            changed = plan.entry is None or plan.entry.fingerprint != fingerprint
            if self.queue_upload and changed:
                out.queued = self._queue(s, pk)
        out.status = plan.status
        out.ignored = dict(image.ignored)  # e.g. artifact, alert, tbrecord
        out.run_pk = pk
        out.state = image.state
        out.path = f"{entity}/{project}/{run.run_id}"

    def _target(self, image: RunImage, existing: RunRecord | None) -> tuple[str, str]:
        ns = self.namespace
        entity = ns.entity or image.entity or self.default_entity or (
            existing.entity if existing else None)
        project = ns.project or image.project or self.default_project or "uncategorized"
        if not entity:
            raise ImportError_(
                f"offline run {image.run_id} names no entity (wandb.init had none)",
                source_run_id=image.run_id,
                hint="Pass --project ENTITY/PROJECT, or set WANDB_ENTITY.")
        return entity, project

    def _restore(self, image: RunImage, rec: RunRecord, cursor: dict[str, Any]) -> None:
        """Continue from the stored run (a user's local edits included) and the carry."""
        image.restore(cursor.get("carry") or {})
        image.display_name = rec.display_name
        image.group, image.job_type, image.notes = rec.group_name, rec.job_type, rec.notes
        image.tags = list(rec.tags or [])
        image.host, image.commit, image.sweep = rec.host, rec.commit, rec.sweep_name
        image.config = _unwrap(rec.config)
        image.summary = dict(rec.summary or {})

    def _prepare_row(self, s: Any, plan: _Plan, image: RunImage, entity: str, project: str,
                     out: RunIngest) -> int | None:
        """The run's pk: its row created (new), moved (another namespace) or reused."""
        run_id = image.run_id
        assert run_id is not None
        if plan.existing is not None and plan.existing.pk is not None:
            pk = plan.existing.pk
            if (plan.existing.entity, plan.existing.project) != (entity, project):
                taken = imports.run_id_taken(s, entity, project, run_id)
                if taken is not None and taken != pk:
                    raise ImportError_(f"{entity}/{project}/{run_id} exists already; cannot "
                                       "move the ingested run there", source_run_id=run_id)
                imports.move_run(s, pk, entity=entity, project=project)
                store_runs.update_run(s, pk,
                                      storage_id=run_storage_id(entity, project, run_id))
            return pk
        taken = imports.run_id_taken(s, entity, project, run_id)
        if taken is not None:
            out.status = "skipped"
            out.path = f"{entity}/{project}/{run_id}"
            out.problem = (f"{out.path} is already in the store and did not come from this "
                           "folder (synced from W&B, logged online or ingested from another "
                           "folder); it is left as it is")
            return None
        return store_runs.save_run(s, RunRecord(
            entity=entity, project=project, run_id=run_id,
            storage_id=run_storage_id(entity, project, run_id), state="running",
            source="local", display_name=image.display_name or run_id,
            created_at=wandb_time(image.start_time or time.time())))

    def _finish_row(self, s: Any, pk: int, run: OfflineRun, image: RunImage) -> None:
        mtime = run.log.stat().st_mtime
        stamp = wandb_time(max(image.last_time or 0.0, mtime))
        values: dict[str, Any] = {
            "display_name": image.display_name or image.run_id,
            "state": image.state,
            "config": _wrap(image.config),
            "summary": image.summary,
            "tags": list(image.tags),
            "notes": image.notes,
            "group_name": image.group,
            "job_type": image.job_type,
            "commit": image.commit,
            "host": image.host,
            "sweep_name": image.sweep,
            "heartbeat_at": stamp,
            "updated_at": stamp,
            "history_line_count": image.history_count,
            "events_line_count": image.events_count,
            "last_step": image.last_step,
            "history_keys": None,  # computed from the rows when asked (server, Api)
            "file_count": len(store_runs.list_files(s, pk)),
        }
        if image.start_time is not None:
            values["created_at"] = wandb_time(image.start_time)
        if image.latest_event is not None:  # the newest sample, as the server keeps it
            values["system_metrics"] = {k: v for k, v in image.latest_event.items()
                                        if k != "_wandb"}
        store_runs.update_run(s, pk, **values)

    def _queue(self, s: Any, pk: int) -> bool:
        """Queue the run's upload unless one is already waiting to go."""
        op = pending_create(s, pk)
        if op is not None and op.state in _WAITING_OPS:
            return False
        outbox_store.enqueue(s, pk, "create_run", {})
        return True

    # --- files ---------------------------------------------------------------------------

    def _put_files(self, run: OfflineRun, now: dict[str, list[int]], saved: list[str],
                   plan: _Plan) -> dict[str, tuple[blobs.BlobInfo, float]]:
        """New or changed saved files of ``files/`` into the blob cache (verified, renamed
        into place; the caller's transaction records them): ``name -> (blob, mtime)``.

        Saved means named by a ``files`` record (``wandb.save``, requirements, media), as
        the SDK's sender uploads them; other files in the folder stay local.
        """
        before = plan.cursor.get("files") or {}
        out: dict[str, tuple[blobs.BlobInfo, float]] = {}
        for name, sig in now.items():
            if before.get(name) == sig and plan.status == "grew":
                continue
            if not any(name == pat or fnmatch.fnmatchcase(name, pat) for pat in saved):
                continue
            try:
                validate_run_file_name(name)
            except MirrorError:
                continue  # unreachable for names under a real folder; never stored
            with open(run.files_dir / name, "rb") as fh:
                info = blobs.put_stream(self.store, fh, record=False)
            out[name] = (info, sig[1] / 1e9)
        return out

    def _save_files(self, s: Any, pk: int, image: RunImage,
                    disk: dict[str, tuple[blobs.BlobInfo, float]], plan: _Plan) -> int:
        made: dict[str, bytes] = {}
        if image.environment:
            made[_METADATA] = json.dumps(image.environment, indent=2).encode("utf-8")
        made[_CONFIG] = yaml.safe_dump(_wrap(image.config), indent=4,
                                       allow_unicode=True).encode("utf-8")
        made[_SUMMARY] = dumps_wire(image.summary).encode("utf-8")
        if image.output_lines:
            made[_OUTPUT] = self._output_log(s, pk, image, plan)
        written = 0
        now = time.time()
        for name, (info, mtime) in disk.items():
            if name in made:
                continue
            written += self._save_file(s, pk, name, info, mtime)
        for name, data in made.items():
            info = blobs.put_bytes(self.store, data, record=False)
            written += self._save_file(s, pk, name, info, now)
        return written

    def _save_file(self, s: Any, pk: int, name: str, info: blobs.BlobInfo,
                   mtime: float) -> int:
        old = store_runs.get_file(s, pk, name)
        if old is not None and old.blob_hash == info.hash and not old.tombstoned:
            return 0
        blobs.record_blob(s, info)
        store_runs.save_file(s, pk, FileRecord(
            name=name, size_bytes=info.size, md5=info.md5_b64,
            mimetype=mimetypes.guess_type(name)[0] or "text/plain",
            updated_at=wandb_time(mtime), blob_hash=info.hash))
        return 1

    def _output_log(self, s: Any, pk: int, image: RunImage, plan: _Plan) -> bytes:
        """The stored ``output.log`` (when growing) followed by the new lines."""
        old = b""
        if plan.status == "grew":
            f = store_runs.get_file(s, pk, _OUTPUT)
            if f is not None and f.blob_hash and blobs.has_blob(self.store, f.blob_hash):
                old = blobs.read_blob(self.store, f.blob_hash)
        new = "".join(line + "\n" for line in image.new_output).encode("utf-8", "replace")
        image.new_output = []
        return old + new



def _chain(first: txlog.Frame | None, rest: Iterator[txlog.Frame]) -> Iterator[txlog.Frame]:
    if first is not None:
        yield first
    yield from rest

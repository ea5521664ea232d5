"""Upload one local run (imported from MLflow, or logged locally) to W&B.

The outbox's ``create_run`` op and ``import_runs(upload=True)`` both end here. The
conversation is the SDK's own (``wandb-logging-protocol.md`` section 9):

1. ``get_run`` (one GraphQL query): does the run exist upstream, and how many history /
   events lines does it hold already?
2. ``upsertBucket``: create or update the run with its full config (W&B's wrapped form),
   summary, tags, notes, display name, group, job type, commit and state.
3. Files: ``createRunFiles`` -> ``PUT`` -> ``markRunFilesUploaded`` for every local file
   whose md5 differs from upstream's (unchanged files are not sent again).
4. file_stream: history and events lines from the first line upstream does not hold
   (see below), the whole summary, and the final ``complete``/``exitcode`` that sets
   W&B's finished/failed state (``upsertBucket`` cannot). States no exit code expresses
   (pending, killed) are set again by a last ``upsertBucket``.

**Idempotent and crash-safe.** Every step can be repeated: upserts replace whole
documents, files are compared by md5, and file_stream lines are addressed by offset, so a
resend overwrites instead of duplicating. Progress is recorded in a sync cursor
(``stream="upload:<run_id>"``, keyed by the destination's base URL, entity and project),
updated after every acknowledged file_stream request; a crash anywhere costs at most the
request in flight. The cursor keeps, per stream, how many lines were acknowledged and a
sha256 of exactly those lines, so a resume starts at ``min(lines acknowledged, upstream's
line count)`` only if the local lines are still the ones sent; if an update changed
earlier rows (an MLflow point logged late at an old step), the stream is re-sent from
line 0 at the same offsets, which is still idempotent.

**Nothing sent when nothing changed.** When the run came from an importer, the cursor
also records the import fingerprint it uploaded; calling again with the same fingerprint
returns at once without any request (``force=True`` re-checks against upstream).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from mirror.errors import (
    AuthError,
    CommError,
    ConfigError,
    EditRejected,
    MirrorError,
    StoreError,
)
from mirror.records import FileRecord, RunRecord
from mirror.store import Store, blobs, history, imports, syncstate
from mirror.store import runs as store_runs
from mirror.upstream.client import UpsertOutcome, WandbClient
from mirror.upstream.filestream import EVENTS, HISTORY, FileStreamWriter, encode_line
from mirror.upstream.http import RetryPolicy, make_session

__all__ = [
    "RunDeletedUpstream",
    "UploadOutcome",
    "UploadResult",
    "make_upload_client",
    "needs_upload",
    "pending_uploads",
    "upload_cursor",
    "upload_run",
    "upload_runs",
    "upload_stream",
]

_EXITCODES = {"finished": 0, "failed": 1, "crashed": 1, "killed": 255}
_STATE_AFTER_STREAM = ("pending", "killed")  # states an exit code cannot express
_READ_BATCH = 2000


class RunDeletedUpstream(EditRejected):
    """W&B refuses the run id: a run with this id was created and deleted (HTTP 409)."""


@dataclass
class UploadResult:
    """What :func:`upload_run` did for one run."""

    run_pk: int
    path: str  # entity/project/run_id upstream
    skipped: bool = False  # already uploaded at this fingerprint: no request sent
    inserted: bool | None = None  # upsertBucket created the run
    history_lines: int = 0  # lines sent (re-sent lines included)
    events_lines: int = 0
    history_offset: int = 0  # first history line sent
    files_uploaded: list[str] = field(default_factory=list)
    files_unchanged: int = 0
    requests: int = 0
    state: str | None = None
    completed: bool = False  # the final complete/exitcode was acknowledged
    warnings: list[str] = field(default_factory=list)


def make_upload_client(base_url: str, api_key: str | None) -> WandbClient:
    """A client for uploads with a short retry budget (an import must not hang offline).

    Raises:
        ConfigError: no API key for ``base_url``.
    """
    if not api_key:
        raise ConfigError(f"no API key for {base_url}",
                          hint="Set WANDB_API_KEY or run `wandb login`; or import with "
                          "upload=False (--no-upload) and push later.")
    session = make_session(base_url=base_url, api_key=api_key)
    return WandbClient(session, policy=RetryPolicy(max_attempts=4, max_elapsed=20.0))


def upload_stream(run_id: str) -> str:
    """The sync-cursor stream that records the upload of ``run_id``."""
    return f"upload:{run_id}"


def upload_cursor(
    store: Store, base_url: str, entity: str, project: str, run_id: str
) -> dict[str, Any] | None:
    """The recorded upload progress of a run at a destination, if any."""
    with store.session() as s:
        value = syncstate.get_cursor(s, base_url, entity, project, upload_stream(run_id))
    return value if isinstance(value, dict) else None


def _target(rec: RunRecord, entity: str | None, project: str | None) -> tuple[str, str]:
    return entity or rec.entity, project or rec.project


def needs_upload(
    store: Store, base_url: str, run_pk: int, *, entity: str | None = None,
    project: str | None = None,
) -> bool:
    """False only when the run was uploaded completely at its current import fingerprint.

    Purely local (no request): what ``import_runs`` uses to avoid even probing the
    server when a re-import changed nothing.
    """
    with store.session() as s:
        rec = store_runs.get_run_by_pk(s, run_pk)
        if rec is None:
            return False
        ent, proj = _target(rec, entity, project)
        entry = imports.import_of_run(s, run_pk)
        cursor = syncstate.get_cursor(s, base_url, ent, proj, upload_stream(rec.run_id))
    if entry is None or entry.fingerprint is None or not isinstance(cursor, dict):
        return True
    return not (cursor.get("done") and cursor.get("fingerprint") == entry.fingerprint)


def pending_uploads(store: Store, base_url: str, source_system: str = "mlflow") -> list[int]:
    """Local pks of imported runs not (completely) uploaded to ``base_url`` at their
    current fingerprint: what ``mirror push`` / the outbox should enqueue."""
    with store.session() as s:
        pks = sorted({e.run_pk for e in imports.list_imports(s, source_system)})
    return [pk for pk in pks if needs_upload(store, base_url, pk)]


class _Lines:
    """The encoded lines of one stream, read from the store in batches, with digests.

    ``digest(n)`` is the sha256 of the first ``n`` lines; snapshots are kept only for
    line counts that may still be acknowledged, so memory stays small.
    """

    def __init__(self, read: Callable[[int, int], list[dict[str, Any]]], start: int) -> None:
        self._read = read
        self.start = start
        self._hash = hashlib.sha256()
        self._snapshots: dict[int, str] = {0: self._hash.hexdigest()}
        self.count = 0

    def __iter__(self) -> Iterator[str]:
        position = 0
        while True:
            batch = self._read(position, _READ_BATCH)
            if not batch:
                return
            for row in batch:
                line = encode_line(row)
                self._hash.update(line.encode("utf-8", "surrogatepass") + b"\n")
                self.count += 1
                if self.count >= self.start:
                    self._snapshots[self.count] = self._hash.hexdigest()
                if self.count > self.start:
                    yield line
            position += len(batch)

    def digest(self, n: int) -> str | None:
        value = self._snapshots.get(n)
        for k in [k for k in self._snapshots if k < n]:
            del self._snapshots[k]
        return value


def _prefix_digest(read: Callable[[int, int], list[dict[str, Any]]], n: int) -> tuple[int, str]:
    """``(lines read, sha256)`` of the first ``n`` local lines (fewer if there are fewer)."""
    h = hashlib.sha256()
    count = 0
    while count < n:
        batch = read(count, min(_READ_BATCH, n - count))
        if not batch:
            break
        for row in batch:
            h.update(encode_line(row).encode("utf-8", "surrogatepass") + b"\n")
        count += len(batch)
    return count, h.hexdigest()


def _history_reader(store: Store, run_pk: int) -> Callable[[int, int], list[dict[str, Any]]]:
    """Rows by position in step order, one short read transaction per batch."""
    state = {"position": 0, "next_step": None}

    def read(position: int, limit: int) -> list[dict[str, Any]]:
        if position == 0:
            state["position"], state["next_step"] = 0, None
        if position != state["position"]:  # pragma: no cover - callers read in order
            raise AssertionError("history is read sequentially")
        out: list[dict[str, Any]] = []
        with store.session() as s:
            for row in history.iter_history(s, run_pk, min_step=state["next_step"]):
                out.append(row)
                if len(out) >= limit:
                    break
        if out:
            state["next_step"] = int(out[-1]["_step"]) + 1
            state["position"] = position + len(out)
        return out

    return read


def _events_reader(store: Store, run_pk: int) -> Callable[[int, int], list[dict[str, Any]]]:
    def read(position: int, limit: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        with store.session() as s:
            for i, row in enumerate(history.iter_events(s, run_pk)):
                if i >= position + limit:
                    break
                if i >= position:
                    out.append(row)
        return out

    return read


def _resume_offset(cursor_part: Any, local_read: Callable[[int, int], list[dict[str, Any]]],
                   upstream_lines: int) -> int:
    """The first line to send: what upstream holds of the lines we know we sent."""
    if not isinstance(cursor_part, dict):
        return 0
    acked = int(cursor_part.get("lines") or 0)
    if acked <= 0 or upstream_lines <= 0:
        return 0
    read, digest = _prefix_digest(local_read, acked)
    if read != acked or digest != cursor_part.get("digest"):
        return 0  # local rows changed since they were sent: resend at the same offsets
    return min(acked, upstream_lines)


def upload_run(
    store: Store,
    client: WandbClient,
    run_pk: int,
    *,
    entity: str | None = None,
    project: str | None = None,
    force: bool = False,
    max_request_bytes: int | None = None,
) -> UploadResult:
    """Create or update the run ``run_pk`` upstream (as ``entity/project``, default the
    run's own), with its files, history, events, summary and final state.

    Safe to call again at any time, including after a crash part-way: see the module
    docstring. Returns what was sent; raises the typed errors of :mod:`mirror.errors`
    (:class:`RunDeletedUpstream` when W&B refuses a deleted run's id).
    """
    base_url = client.base_url
    with store.session() as s:
        rec = store_runs.get_run_by_pk(s, run_pk)
        if rec is None:
            raise StoreError(f"no local run with pk {run_pk}")
        ent, proj = _target(rec, entity, project)
        entry = imports.import_of_run(s, run_pk)
        cursor = syncstate.get_cursor(s, base_url, ent, proj, upload_stream(rec.run_id))
        local_files = [f for f in store_runs.list_files(s, run_pk) if f.blob_hash]
    cursor = cursor if isinstance(cursor, dict) else {}
    fingerprint = entry.fingerprint if entry is not None else None
    result = UploadResult(run_pk=run_pk, path=f"{ent}/{proj}/{rec.run_id}", state=rec.state)
    if (not force and fingerprint is not None and cursor.get("done")
            and cursor.get("fingerprint") == fingerprint):
        result.skipped = True
        result.completed = True
        return result

    def save_cursor(**changes: Any) -> None:
        cursor.update(changes)
        cursor["updated_at"] = time.time()
        with store.transaction() as s:
            syncstate.set_cursor(s, base_url, ent, proj, upload_stream(rec.run_id), dict(cursor))

    # 1. what upstream holds
    remote = client.get_run(ent, proj, rec.run_id)
    result.requests += 1
    if cursor.get("done") and cursor.get("fingerprint") != fingerprint:
        save_cursor(done=False)

    # 2. the run itself
    _upsert(client, rec, ent, proj, result, state=rec.state)

    # 3. files
    _upload_files(store, client, rec, ent, proj, local_files, remote is not None, result)
    save_cursor(files={f.name: f.md5 for f in local_files})

    # 4. history, events, summary, final state
    read_history = _history_reader(store, run_pk)
    read_events = _events_reader(store, run_pk)
    h_start = _resume_offset(cursor.get("history"), read_history,
                             (remote.history_line_count or 0) if remote else 0)
    e_start = _resume_offset(cursor.get("events"), read_events,
                             (remote.events_line_count or 0) if remote else 0)
    h_lines = _Lines(read_history, h_start)
    e_lines = _Lines(read_events, e_start)

    def on_ack(offsets: dict[str, int]) -> None:
        changes: dict[str, Any] = {}
        for name, lines, key in ((HISTORY, h_lines, "history"), (EVENTS, e_lines, "events")):
            if name in offsets:
                digest = lines.digest(offsets[name])
                if digest is not None:
                    changes[key] = {"lines": offsets[name], "digest": digest}
        if changes:
            save_cursor(**changes)

    exitcode = _EXITCODES.get(rec.state or "")
    writer = FileStreamWriter(client, ent, proj, rec.run_id,
                              **({"max_request_bytes": max_request_bytes}
                                 if max_request_bytes else {}))
    streamed = writer.write(
        {HISTORY: (h_start, h_lines), EVENTS: (e_start, e_lines)},
        summary=encode_line(rec.summary or {}),
        complete=exitcode is not None,
        exitcode=exitcode,
        uploaded=result.files_uploaded,
        on_ack=on_ack,
    )
    result.requests += streamed.requests
    result.history_offset = h_start
    result.history_lines = streamed.lines.get(HISTORY, 0)
    result.events_lines = streamed.lines.get(EVENTS, 0)
    result.completed = exitcode is not None
    if rec.state in _STATE_AFTER_STREAM:
        _upsert(client, rec, ent, proj, result, state=rec.state, only_state=True)
    final: dict[str, Any] = {
        "done": True, "fingerprint": fingerprint, "state": rec.state, "uploaded_at": time.time(),
        "history": {"lines": h_lines.count, "digest": h_lines.digest(h_lines.count)},
        "events": {"lines": e_lines.count, "digest": e_lines.digest(e_lines.count)},
    }
    save_cursor(**final)
    return result


def _upsert(client: WandbClient, rec: RunRecord, entity: str, project: str,
            result: UploadResult, *, state: str | None, only_state: bool = False) -> None:
    item: dict[str, Any] = {"name": rec.run_id, "modelName": project, "entityName": entity}
    if only_state:
        item["state"] = state
    else:
        fields: dict[str, Any] = {
            "displayName": rec.display_name,
            "notes": rec.notes,
            "description": rec.description,
            "groupName": rec.group_name,
            "jobType": rec.job_type,
            "commit": rec.commit,
            "host": rec.host,
            "sweep": rec.sweep_name,
            "config": rec.config or {},
            "summaryMetrics": rec.summary or {},
            "tags": list(rec.tags or []),
            "state": state,
        }
        item.update({k: v for k, v in fields.items() if v is not None})
    try:
        outcome = client.upsert_buckets([item])[0]
    except EditRejected as exc:  # W&B answers a deleted run's id with HTTP 409
        outcome = UpsertOutcome(0, None, None, exc)
    result.requests += 1
    if outcome.error is not None:
        err = outcome.error
        if err.status == 409 or "deleted" in err.message.lower():
            raise RunDeletedUpstream(
                f"W&B refuses run id {entity}/{project}/{rec.run_id}: a run with this id was "
                "created and deleted there, and W&B never reuses the id of a deleted run",
                status=err.status, operation="UpsertBucket",
                hint="Remap it to a new id: MlflowImporter(...).remap_run(<mlflow run id>) "
                "or `mirror import mlflow ... --remap-deleted`, then upload again.",
            ) from err
        raise err
    if not only_state:
        result.inserted = outcome.inserted


def _upload_files(
    store: Store, client: WandbClient, rec: RunRecord, entity: str, project: str,
    local: list[FileRecord], exists: bool, result: UploadResult,
) -> None:
    if not local:
        return
    remote_md5: dict[str, str | None] = {}
    if exists:
        for page in client.iter_files(entity, project, rec.run_id):
            result.requests += 1
            for f in page:
                remote_md5[f.name] = f.md5
    todo = []
    for f in local:
        if remote_md5.get(f.name) == f.md5 and f.md5 is not None:
            result.files_unchanged += 1
        elif f.blob_hash and blobs.has_blob(store, f.blob_hash):
            todo.append(f)
        else:
            result.warnings.append(f"{f.name}: not in the local blob cache; not uploaded")
    if not todo:
        return
    for batch in _chunks(todo, 100):
        urls, headers = client.create_run_files(entity, project, rec.run_id,
                                                [f.name for f in batch])
        result.requests += 1
        done = []
        for f in batch:
            url = urls.get(f.name)
            if url is None:
                result.warnings.append(f"{f.name}: the server gave no upload URL")
                continue
            assert f.blob_hash is not None
            with blobs.open_blob(store, f.blob_hash) as fh:
                client.upload(url, fh, headers)
            result.requests += 1
            done.append(f.name)
        if done:
            client.mark_run_files_uploaded(entity, project, rec.run_id, done)
            result.requests += 1
            result.files_uploaded.extend(done)


def _chunks(items: list[FileRecord], n: int) -> Iterable[list[FileRecord]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


@dataclass
class UploadOutcome:
    """How one run of :func:`upload_runs` ended: ``status`` is uploaded | unchanged |
    pending (the server is unreachable: retry later) | failed (``reason`` says why)."""

    run_pk: int
    status: str
    reason: str | None = None
    result: UploadResult | None = None


def upload_runs(
    store: Store,
    client: WandbClient,
    run_pks: Iterable[int],
    *,
    remap: Callable[[int], bool] | None = None,
    on_done: Callable[[UploadOutcome], None] | None = None,
) -> list[UploadOutcome]:
    """Upload several runs, one by one, never letting one failure hide the others.

    Runs already uploaded at their fingerprint are ``unchanged`` without any request.
    Before the first real upload one cheap query checks the server; once it does not
    answer, the remaining runs are ``pending`` without being tried (an offline import
    must not wait out a retry budget per run). ``remap(run_pk)`` is offered a run W&B
    refuses because its id was deleted there; if it returns True (it gave the run a new
    id) the upload is tried once more.
    """
    outcomes: list[UploadOutcome] = []
    blocked: tuple[str, str] | None = None
    probed = False
    for pk in run_pks:
        if not needs_upload(store, client.base_url, pk):
            outcome = UploadOutcome(pk, "unchanged")
        else:
            if not probed and blocked is None:
                probed = True
                try:
                    client.viewer()
                except (CommError, AuthError) as exc:
                    blocked = ("pending" if isinstance(exc, CommError) else "failed",
                               exc.message)
            if blocked is not None:
                outcome = UploadOutcome(pk, *blocked)
            else:
                outcome = _upload_one(store, client, pk, remap)
                if outcome.status == "pending":
                    blocked = ("pending", "not tried: the server stopped answering "
                               f"({outcome.reason})")
        outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)
    return outcomes


def _upload_one(store: Store, client: WandbClient, pk: int,
                remap: Callable[[int], bool] | None) -> UploadOutcome:
    for attempt in (1, 2):
        try:
            return UploadOutcome(pk, "uploaded", result=upload_run(store, client, pk))
        except RunDeletedUpstream as exc:
            if remap is not None and attempt == 1 and remap(pk):
                continue
            return UploadOutcome(pk, "failed", f"{exc.message} ({exc.hint})")
        except CommError as exc:
            return UploadOutcome(pk, "pending", exc.message)
        except MirrorError as exc:
            return UploadOutcome(pk, "failed", exc.message)
    raise AssertionError("unreachable")  # pragma: no cover

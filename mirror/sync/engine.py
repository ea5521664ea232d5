"""Pulling one project: list what changed, then fetch history, events and files per run.

The shape (DESIGN.md, offline-sync-anchors §7):

1. **List.** First time or ``--full``: every run. Otherwise only runs whose
   ``heartbeatAt`` or ``createdAt`` is after the stored watermark minus a safety margin,
   in the server's own timestamp format. Runs listed again at the boundary are
   de-duplicated by key and by a hash of what the listing showed (``listing_hash``).
2. **Fetch per changed run**, in a bounded thread pool (network in parallel, one writer):
   the run row; history pages by step window, each page committed on its own (the
   resume point is ``max(step)`` of the stored rows, so it cannot disagree with the data);
   events when their count changed; files whose md5/size/updatedAt changed, downloaded
   verified into the blob cache before the row that references them is committed.
   A run whose history was rewound or truncated upstream is refetched whole and swapped in
   one transaction.
3. **Commit the run's listing hash** once all its data is in: a crash before that makes
   the next sync redo the run (idempotent upserts), never skip it.
4. **Watermarks** advance, in one transaction, only when every run listed succeeded.
   A full listing also tombstones runs that vanished upstream (data kept).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from mirror.errors import MirrorError, UnsafePathError
from mirror.outbox.settle import settle_run
from mirror.paths import validate_run_file_name
from mirror.records import FileRecord, RunRecord, SweepRecord
from mirror.store import Store, blobs, codec, history, runs, syncstate
from mirror.sync.policy import FilePolicy
from mirror.sync.timestamps import latest, shift

HEARTBEAT_STREAM = "runs.heartbeat_at"
CREATED_STREAM = "runs.created_at"


class Upstream(Protocol):
    """What sync needs from :class:`mirror.upstream.client.WandbClient`."""

    def iter_runs(self, entity: str, project: str, *, filters: dict[str, Any] | None = ...,
                  order: str = ..., per_page: int = ...) -> Iterable[list[RunRecord]]: ...

    def history(self, entity: str, project: str, run_id: str, *, min_step: int,
                max_step: int, samples: int) -> list[dict[str, Any]]: ...

    def events(self, entity: str, project: str, run_id: str,
               samples: int) -> list[dict[str, Any]]: ...

    def iter_files(self, entity: str, project: str, run_id: str, *,
                   names: list[str] | None = ..., per_page: int = ...
                   ) -> Iterable[list[FileRecord]]: ...

    def iter_sweeps(self, entity: str, project: str, *,
                    per_page: int = ...) -> Iterable[list[SweepRecord]]: ...


Downloader = Callable[[str, FileRecord], blobs.BlobInfo]


@dataclass
class SyncOptions:
    full: bool = False
    files: FilePolicy = field(default_factory=FilePolicy)
    workers: int = 4
    history_page: int = 10_000  # rows per history request (samples = window size)
    margin_seconds: float = 300.0  # clock skew / listing lag safety margin
    per_page: int = 100  # runs per listing page


@dataclass
class RunOutcome:
    run_id: str
    status: str  # new | updated | failed
    rows: int = 0
    events: int = 0
    files: int = 0
    bytes: int = 0
    error: str | None = None
    skipped: list[str] = field(default_factory=list)  # e.g. files with hostile names


@dataclass
class ProjectReport:
    entity: str
    project: str
    listed: int = 0
    unchanged: int = 0
    tombstoned: int = 0
    sweeps: int = 0
    outcomes: list[RunOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def rows(self) -> int:
        return sum(o.rows for o in self.outcomes)

    @property
    def bytes(self) -> int:
        return sum(o.bytes for o in self.outcomes)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rows"] = self.rows
        d["bytes"] = self.bytes
        d["failed"] = len(self.failed)
        return d


class Progress(Protocol):
    def runs(self, n: int) -> None: ...
    def run_done(self) -> None: ...
    def rows(self, n: int) -> None: ...
    def bytes(self, n: int) -> None: ...


class _NoProgress:
    def runs(self, n: int) -> None: ...
    def run_done(self) -> None: ...
    def rows(self, n: int) -> None: ...
    def bytes(self, n: int) -> None: ...


def listing_hash(rec: RunRecord, policy: FilePolicy) -> str:
    """A fingerprint of everything the listing showed about a run, and of the file policy.

    The policy is part of it because a run synced with ``--files none`` is not complete
    for a later ``--files all``: its files must then be fetched although the run is not.
    """
    data: dict[str, Any] = asdict(rec)
    data.pop("pk", None)
    data["__files__"] = [list(policy.patterns), policy.max_size]
    return hashlib.sha256(codec.dumps(data).encode("utf-8")).hexdigest()[:32]


class ProjectSync:
    """Sync one ``entity/project`` from ``client`` into ``store``."""

    def __init__(
        self,
        store: Store,
        client: Upstream,
        download: Downloader,
        base_url: str,
        entity: str,
        project: str,
        options: SyncOptions | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.download = download
        self.base_url = base_url
        self.entity = entity
        self.project = project
        self.opts = options or SyncOptions()
        self.progress = progress or _NoProgress()
        self._lock = threading.Lock()
        self._listed_at = 0.0  # when this pull began reading upstream (settles outbox ops)

    # --- listing -----------------------------------------------------------------

    def _cursor(self, stream: str) -> str | None:
        with self.store.session() as s:
            value = syncstate.get_cursor(s, self.base_url, self.entity, self.project, stream)
        return value if isinstance(value, str) else None

    def _list(self) -> tuple[list[RunRecord], bool]:
        """The runs to look at, and whether this was a complete listing."""
        hb = self._cursor(HEARTBEAT_STREAM)
        created = self._cursor(CREATED_STREAM)
        complete = self.opts.full or (hb is None and created is None)
        filters: dict[str, Any] | None = None
        if not complete:
            clauses: list[dict[str, Any]] = []
            if hb:
                clauses.append({"heartbeatAt": {"$gt": shift(hb, -self.opts.margin_seconds)}})
            if created:
                clauses.append({"createdAt": {"$gt": shift(created, -self.opts.margin_seconds)}})
            filters = {"$or": clauses} if len(clauses) > 1 else clauses[0]
        seen: dict[str, RunRecord] = {}
        for page in self.client.iter_runs(
            self.entity, self.project, filters=filters, order="+created_at",
            per_page=self.opts.per_page,
        ):
            for rec in page:
                seen[rec.run_id] = rec  # boundary rows listed twice collapse by key
        return list(seen.values()), complete

    # --- the whole project -------------------------------------------------------

    def run(self) -> ProjectReport:
        started = time.monotonic()
        report = ProjectReport(self.entity, self.project)
        self._listed_at = time.time()
        listed, complete = self._list()
        report.listed = len(listed)
        with self.store.session() as s:
            stored = syncstate.listing_state(s, self.entity, self.project)
        policy = self.opts.files
        todo = [r for r in listed
                if stored.get(r.run_id, (0, None))[1] != listing_hash(r, policy)]
        report.unchanged = len(listed) - len(todo)
        self.progress.runs(len(todo))

        if complete:
            report.sweeps = self._sync_sweeps()

        with ThreadPoolExecutor(max_workers=max(1, self.opts.workers)) as pool:
            futures = {pool.submit(self._sync_run, rec, rec.run_id in stored): rec
                       for rec in todo}
            for fut in as_completed(futures):
                report.outcomes.append(fut.result())
                self.progress.run_done()

        with self.store.transaction() as s:
            if complete:
                gone = [pk for run_id, (pk, _) in stored.items()
                        if run_id not in {r.run_id for r in listed}]
                report.tombstoned = syncstate.tombstone_runs(s, gone)
            if not report.failed:
                hb = latest([r.heartbeat_at for r in listed] + [self._cursor(HEARTBEAT_STREAM)])
                cr = latest([r.created_at for r in listed] + [self._cursor(CREATED_STREAM)])
                args = (s, self.base_url, self.entity, self.project)
                syncstate.set_cursor(*args, HEARTBEAT_STREAM, hb or "")
                syncstate.set_cursor(*args, CREATED_STREAM, cr or "")
        report.seconds = time.monotonic() - started
        return report

    def _sync_sweeps(self) -> int:
        n = 0
        for page in self.client.iter_sweeps(self.entity, self.project):
            with self.store.transaction() as s:
                for sweep in page:
                    runs.save_sweep(s, sweep)
                    n += 1
        return n

    # --- one run -----------------------------------------------------------------

    def _sync_run(self, rec: RunRecord, known: bool) -> RunOutcome:
        out = RunOutcome(rec.run_id, "updated" if known else "new")
        try:
            with self.store.transaction() as s:
                pk = runs.save_run(s, rec, only=_upstream_fields(rec))
                # Not done until the listing hash lands, at the very end.
                syncstate.set_listing_hash(s, pk, None)
            out.rows = self._sync_history(rec, pk)
            out.events = self._sync_events(rec, pk)
            self._sync_files(rec, pk, out)
            with self.store.transaction() as s:
                syncstate.set_listing_hash(s, pk, listing_hash(rec, self.opts.files))
                settle_run(s, pk, pulled_after=self._listed_at)
        except MirrorError as exc:
            out.status = "failed"
            out.error = exc.message
        except Exception as exc:  # one bad run must not stop the others
            out.status = "failed"
            out.error = f"{type(exc).__name__}: {exc}"
        return out

    def _sync_history(self, rec: RunRecord, pk: int) -> int:
        if rec.last_step is None or not rec.history_line_count:
            return 0
        with self.store.session() as s:
            count, _lo, hi = history.history_bounds(s, pk)
        rewound = hi is not None and (
            rec.last_step < hi or (rec.history_line_count or 0) < count
        )
        if rewound:
            return self._refetch_history(rec, pk)
        start = 0 if hi is None else hi + 1
        fetched = 0
        for rows in self._history_pages(rec, start):
            with self.store.transaction() as s:
                history.save_history(s, pk, rows)
            fetched += len(rows)
            self.progress.rows(len(rows))
        return fetched

    def _history_pages(self, rec: RunRecord, start: int) -> Iterable[list[dict[str, Any]]]:
        """Full rows from ``start`` to the run's last step, in windows never sampled.

        ``samples`` caps the rows a window returns (the server downsamples beyond it), so
        a window is accepted only when it returned fewer rows than ``samples`` or spans
        no more steps than ``samples`` (steps are unique integers). Otherwise it is
        halved and asked again. Empty windows do not end the scan: steps may have gaps.
        """
        page = self.opts.history_page
        end = (rec.last_step or 0) + 1
        window = page
        remaining_rows = max(1, rec.history_line_count or 1)
        if end - start > 0 and remaining_rows <= page:
            window = end - start  # the whole rest fits in one request
        lo = start
        while lo < end:
            hi = min(end, lo + max(1, window))
            rows = self.client.history(self.entity, self.project, rec.run_id,
                                       min_step=lo, max_step=hi, samples=page)
            if len(rows) >= page and hi - lo > page:
                window = max(page, (hi - lo) // 2)
                continue  # may have been sampled: ask for a smaller window
            rows = [r for r in rows if isinstance(r.get("_step"), int) and lo <= r["_step"] < hi]
            if rows:
                yield rows
            lo = hi
            window = max(window, page)

    def _refetch_history(self, rec: RunRecord, pk: int) -> int:
        """Rewound/truncated upstream: fetch everything, then swap in one transaction."""
        shadow: list[dict[str, Any]] = []
        for rows in self._history_pages(rec, 0):
            shadow.extend(rows)
        with self.store.transaction() as s:
            history.delete_history(s, pk)
            history.save_history(s, pk, shadow)
        self.progress.rows(len(shadow))
        return len(shadow)

    def _sync_events(self, rec: RunRecord, pk: int) -> int:
        if not rec.events_line_count:
            return 0
        with self.store.session() as s:
            stored = history.count_events(s, pk)
        if stored == rec.events_line_count:
            return 0
        rows = self.client.events(self.entity, self.project, rec.run_id,
                                  samples=max(rec.events_line_count, 1))
        with self.store.transaction() as s:
            history.replace_events(s, pk, rows)
        return len(rows)

    def _sync_files(self, rec: RunRecord, pk: int, out: RunOutcome) -> None:
        """List the run's files; download changed ones per policy; tombstone vanished ones.

        A download is verified (size, md5) and renamed into the blob cache before the
        transaction that records the blob and points the file row at it.
        """
        with self.store.session() as s:
            have = syncstate.file_states(s, pk)
        listed: set[str] = set()
        for page in self.client.iter_files(self.entity, self.project, rec.run_id):
            for f in page:
                try:
                    validate_run_file_name(f.name)
                except UnsafePathError as exc:
                    out.skipped.append(exc.message)
                    continue
                listed.add(f.name)
                old = have.get(f.name)
                same_meta = old is not None and old[:3] == (f.md5, f.size_bytes, f.updated_at)
                cached = old is not None and old[3] is not None
                want = self.opts.files.wants(f.name, f.size_bytes) and bool(f.url)
                if same_meta and (cached or not want):
                    continue
                info = self.download(f.url or "", f) if want else None
                f.blob_hash = info.hash if info else None
                with self.store.transaction() as s:
                    if info is not None:
                        blobs.record_blob(s, info)
                    runs.save_file(s, pk, f)
                out.files += 1
                if info is not None:
                    out.bytes += info.size
                    self.progress.bytes(info.size)
        gone = [n for n in have if n not in listed]
        if gone:
            with self.store.transaction() as s:
                syncstate.tombstone_files(s, pk, gone)


def _upstream_fields(rec: RunRecord) -> list[str]:
    """The run columns a pull writes (all that upstream sends; never local-only ones)."""
    return [
        "storage_id", "display_name", "state", "config", "summary", "system_metrics", "tags",
        "notes", "description", "group_name", "job_type", "commit", "host", "username",
        "user_name", "read_only", "created_at", "heartbeat_at", "updated_at",
        "history_line_count", "events_line_count", "file_count", "last_step", "history_keys",
        "sweep_name", "tombstoned",
    ]

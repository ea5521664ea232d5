"""Pulling one project: list what changed, then fetch history, events and files per run.

The shape (DESIGN.md, offline-sync-anchors §7):

1. **List.** First time or ``--full``: every run. Otherwise only runs whose
   ``heartbeatAt`` or ``createdAt`` is after the stored watermark minus a safety margin,
   in the server's own timestamp format. Runs listed again at the boundary are
   de-duplicated by key and by a hash of what the listing showed (``listing_hash``).
2. **Fetch the changed runs**, in a bounded thread pool (network in parallel, one writer).
   Runs whose missing history fits one window travel in *batches*: one aliased request
   (``RunParts``) carries the history window, events and first files page of up to
   ``batch_runs`` runs (``batch_rows`` rows in all), their changed files are downloaded
   concurrently, and the whole batch is committed in ONE transaction. Per-request cost,
   not bytes, is what a sync of many small runs pays for, so this is the fast path. A run
   that failed in a batch, and every run that does not fit one (long histories, rewound
   runs, many files) goes the per-run way: history pages by step window, each page
   committed on its own (the resume point is ``max(step)`` of the stored rows, so it
   cannot disagree with the data); events when their count changed; files whose
   md5/size/updatedAt changed. Either way a file is downloaded verified into the blob
   cache before the row that references it is committed, and a run whose history was
   rewound or truncated upstream is refetched whole and swapped in one transaction.
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
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

from mirror.errors import MirrorError, UnsafePathError
from mirror.outbox.settle import settle_run, settle_runs
from mirror.paths import validate_run_file_name
from mirror.records import FileRecord, RunRecord, SweepRecord
from mirror.store import Store, blobs, codec, history, runs, syncstate
from mirror.store import outbox as outbox_store
from mirror.sync.download_process import DownloadProcess, ProcessUnavailable
from mirror.sync.policy import FilePolicy
from mirror.sync.timestamps import latest, shift
from mirror.upstream.client import RunAsk, RunParts

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

    def run_parts(self, entity: str, project: str,
                  asks: list[RunAsk]) -> list[RunParts]: ...


Downloader = Callable[[str, FileRecord], blobs.BlobInfo]


@dataclass
class SyncOptions:
    full: bool = False
    files: FilePolicy = field(default_factory=FilePolicy)
    workers: int = 4
    history_page: int = 10_000  # rows per history request (samples = window size)
    margin_seconds: float = 300.0  # clock skew / listing lag safety margin
    per_page: int = 100  # runs per listing page
    batch_runs: int = 50  # runs per batched request (RunParts)
    batch_rows: int = 10_000  # history + events rows one batched request may carry
    files_per_page: int = 100  # files per listing page (a batch carries the first)
    download_workers: int = 16  # concurrent verified downloads (their fsyncs overlap)
    # Downloads go to a child process (download_process.py) when a project has at least
    # this many files to fetch; 0 turns the child off.
    process_min_files: int = 200


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
    download_process: bool = False  # files were downloaded by the child process

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
    # Shallow (asdict would deep-copy config and summary): the same JSON, so the same hash.
    data: dict[str, Any] = {f.name: getattr(rec, f.name) for f in fields(rec)}
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
        start_process: Callable[[], DownloadProcess] | None = None,
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
        self._downloads: ThreadPoolExecutor | None = None  # set while run() runs
        self._start_process = start_process
        self._process: DownloadProcess | None = None  # set while run() runs, if started

    # --- listing -----------------------------------------------------------------

    def _cursor(self, stream: str) -> str | None:
        with self.store.session() as s:
            value = syncstate.get_cursor(s, self.base_url, self.entity, self.project, stream)
        return value if isinstance(value, str) else None

    def _listing(self) -> tuple[Iterable[list[RunRecord]], bool]:
        """The listing's pages of runs to look at, and whether it is a complete listing."""
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
        pages = self.client.iter_runs(self.entity, self.project, filters=filters,
                                      order="+created_at", per_page=self.opts.per_page)
        return pages, complete

    # --- the whole project -------------------------------------------------------

    def run(self) -> ProjectReport:
        """List, fetch what changed, settle, advance the watermarks.

        Batches start as soon as their listing page arrives (a big project's listing is
        ten requests or more), and the download child starts in the background once the
        runs listed so far hold enough files: neither waits for the whole listing.
        """
        started = time.monotonic()
        report = ProjectReport(self.entity, self.project)
        self._listed_at = time.time()
        pages, complete = self._listing()
        with self.store.session() as s:
            stored = syncstate.listing_state(s, self.entity, self.project)
        if complete:
            report.sweeps = self._sync_sweeps()

        policy = self.opts.files
        listed: dict[str, RunRecord] = {}
        fetched: set[str] = set()
        files_ahead = 0
        starter: threading.Thread | None = None
        try:
            with (
                ThreadPoolExecutor(max_workers=max(1, self.opts.workers)) as pool,
                ThreadPoolExecutor(max_workers=max(1, self.opts.download_workers),
                                   thread_name_prefix="mirror-download") as downloads,
            ):
                self._downloads = downloads
                futures = []
                for page in pages:
                    todo: list[RunRecord] = []
                    for rec in page:
                        if rec.run_id in listed:
                            continue  # a boundary row listed twice: the first one counts
                        listed[rec.run_id] = rec
                        if stored.get(rec.run_id, (0, None))[1] != listing_hash(rec, policy):
                            todo.append(rec)
                    if not todo:
                        continue
                    fetched.update(r.run_id for r in todo)
                    self.progress.runs(len(todo))
                    files_ahead += sum(r.file_count or 0 for r in todo)
                    if starter is None and self._wants_process(files_ahead):
                        starter = threading.Thread(target=self._start_process_now,
                                                   name="mirror-start-downloads", daemon=True)
                        starter.start()
                    futures += [pool.submit(self._sync_batch, batch)
                                for batch in self._batches(todo, stored)]
                for fut in as_completed(futures):
                    for outcome in fut.result():
                        report.outcomes.append(outcome)
                        self.progress.run_done()
        finally:
            if starter is not None:
                starter.join()
            if self._process is not None:
                report.download_process = True
                self._process.close()
                self._process = None
        report.listed = len(listed)
        report.unchanged = len(listed) - len(fetched)

        with self.store.transaction() as s:
            # The runs listed unchanged are settled too.
            settle_runs(s, [stored[r][0] for r in listed if r in stored and r not in fetched],
                        pulled_after=self._listed_at)
            if complete:
                gone = [pk for run_id, (pk, _) in stored.items() if run_id not in listed]
                report.tombstoned = syncstate.tombstone_runs(s, gone)
            if not report.failed:
                recs = listed.values()
                hb = latest([r.heartbeat_at for r in recs] + [self._cursor(HEARTBEAT_STREAM)])
                cr = latest([r.created_at for r in recs] + [self._cursor(CREATED_STREAM)])
                args = (s, self.base_url, self.entity, self.project)
                syncstate.set_cursor(*args, HEARTBEAT_STREAM, hb or "")
                syncstate.set_cursor(*args, CREATED_STREAM, cr or "")
        report.seconds = time.monotonic() - started
        return report

    def _wants_process(self, files_ahead: int) -> bool:
        """Whether to start the download child: this pull has enough files to pay for
        starting it (about a second of imports, spent in the background)."""
        return (self._start_process is not None and self.opts.files.downloads_anything
                and bool(self.opts.process_min_files)
                and files_ahead >= self.opts.process_min_files)

    def _start_process_now(self) -> None:
        """Start the child; batches download in threads here until it is ready, and for
        good if it will not start."""
        assert self._start_process is not None
        try:
            self._process = self._start_process()
        except ProcessUnavailable:
            pass

    def _sync_sweeps(self) -> int:
        n = 0
        for page in self.client.iter_sweeps(self.entity, self.project):
            with self.store.transaction() as s:
                for sweep in page:
                    runs.save_sweep(s, sweep)
                    n += 1
        return n

    # --- batches of runs ----------------------------------------------------------

    def _batches(self, todo: list[RunRecord],
                 stored: dict[str, tuple[int, str | None]]) -> list[list[_Item]]:
        """Group runs for :meth:`_sync_batch` by the rows the listing says they hold.

        A run bigger than a batch on its own is a batch of one, which goes the per-run
        way (paged history). Upper bounds only: a known run needs just its new rows.
        """
        out: list[list[_Item]] = []
        batch: list[_Item] = []
        budget = 0
        limit = max(1, self.opts.batch_rows)
        for rec in todo:
            item = _Item(rec, stored[rec.run_id][0] if rec.run_id in stored else None)
            size = (rec.history_line_count or 0) + (rec.events_line_count or 0)
            if size > limit:
                out.append([item])
                continue
            if batch and (budget + size > limit or len(batch) >= max(1, self.opts.batch_runs)):
                out.append(batch)
                batch, budget = [], 0
            batch.append(item)
            budget += size
        if batch:
            out.append(batch)
        return out

    def _sync_batch(self, items: list[_Item]) -> list[RunOutcome]:
        """Fetch a batch in one request, download its files, commit it in one transaction.

        Runs that do not fit (rewound, too long, more files than one page) or that failed
        in the batched request are synced one by one with :meth:`_sync_run`, so one bad
        run costs only its own retries and never blocks the others.
        """
        plans: list[_Plan] = []
        solo: list[_Item] = []
        with self.store.session() as s:
            for item in items:
                plan = self._plan(s, item)
                if plan is None:
                    solo.append(item)
                else:
                    plans.append(plan)
        parts: list[RunParts] | None = None
        if plans:
            asks = [p.ask for p in plans]
            try:
                parts = self.client.run_parts(self.entity, self.project, asks)
            except Exception:  # the whole request failed: every run on its own
                parts = None
        if parts is None:
            solo.extend(p.item for p in plans)
            plans = []
        done: list[_Plan] = []
        outcomes: list[RunOutcome] = []
        for plan, part in zip(plans, parts or [], strict=True):
            if self._accept(plan, part):
                done.append(plan)
            else:
                solo.append(plan.item)
        downloads = [(plan, f) for plan in done for f, want in plan.files if want]
        infos = self._download_all([f for _, f in downloads])
        failed: dict[int, str] = {}
        for (plan, f), info in zip(downloads, infos, strict=True):
            if isinstance(info, BaseException):
                failed.setdefault(id(plan), _reason(info))
            else:
                plan.infos[f.name] = info
        for plan in done:
            if id(plan) in failed:  # its retries are spent: reported, the others go on
                outcomes.append(RunOutcome(plan.rec.run_id, "failed", error=failed[id(plan)]))
        done = [p for p in done if id(p) not in failed]
        if done:
            try:
                with self.store.transaction() as s:
                    rows = runs.save_runs(s, [p.rec for p in done], only=_UPSTREAM_FIELDS)
                    saved = [self._save_plan(s, plan, pk)
                             for plan, pk in zip(done, rows, strict=True)]
                    # Outbox ops the pulled rows now show: one query finds the runs with any.
                    pks = [p.pk for p in done if p.pk is not None]
                    for pk in outbox_store.ops_for_runs(s, pks, states=["done"]):
                        settle_run(s, pk, pulled_after=self._listed_at)
                outcomes.extend(saved)
                for out in saved:
                    self.progress.rows(out.rows)
                    self.progress.bytes(out.bytes)
            except Exception:  # rolled back: each run gets its own chance (and reason)
                solo.extend(p.item for p in done)
        outcomes.extend(self._sync_run(item.rec, item.pk is not None) for item in solo)
        return outcomes

    def _plan(self, s: Any, item: _Item) -> _Plan | None:
        """What the batch must ask for ``item``; None if the run must go the per-run way."""
        rec = item.rec
        count, hi, events, have = 0, None, 0, {}
        if item.pk is not None:
            count, _lo, hi = history.history_bounds(s, item.pk)
            events = history.count_events(s, item.pk)
            have = syncstate.file_states(s, item.pk)
        window: tuple[int, int, int] | None = None
        page = self.opts.history_page
        if rec.last_step is not None and rec.history_line_count:
            if hi is not None and (rec.last_step < hi or rec.history_line_count < count):
                return None  # rewound: refetched whole and swapped, per run
            start = 0 if hi is None else hi + 1
            end = rec.last_step + 1
            if end - start > page and rec.history_line_count > page:
                return None  # more than one window: paged per run
            if start < end:
                window = (start, end, page)
        want_events = bool(rec.events_line_count) and events != rec.events_line_count
        ask = RunAsk(rec.run_id, history=window,
                     events=max(rec.events_line_count or 0, 1) if want_events else None,
                     files=self.opts.files_per_page)
        return _Plan(item, ask, have)

    def _accept(self, plan: _Plan, part: RunParts) -> bool:
        """Keep a batch answer if it is whole: no error, not sampled, one files page."""
        if part.error is not None or part.files_more:
            return False
        if plan.ask.history is not None:
            lo, hi, samples = plan.ask.history
            rows = part.history or []
            if len(rows) >= samples and hi - lo > samples:
                return False  # may have been sampled: page it per run
            texts = part.history_texts or [None] * len(rows)
            plan.rows = [(r["_step"], text or codec.dumps(r))
                         for r, text in zip(rows, texts, strict=True)
                         if isinstance(r.get("_step"), int) and lo <= r["_step"] < hi]
        plan.events = part.events
        plan.files = self._file_actions(part.files or [], plan.have, plan.skipped,
                                        plan.listed)
        return True

    def _save_plan(self, s: Any, plan: _Plan, pk: int) -> RunOutcome:
        """Write the data of one run of a batch, whose row is saved (the batch's
        transaction)."""
        rec = plan.rec
        out = RunOutcome(rec.run_id, plan.status, skipped=plan.skipped)
        if plan.rows:
            out.rows = history.save_history_texts(s, pk, plan.rows)
        if plan.events is not None:
            history.replace_events(s, pk, plan.events)
            out.events = len(plan.events)
        for f, _want in plan.files:
            info = plan.infos.get(f.name)
            f.blob_hash = info.hash if info else None
            out.bytes += info.size if info else 0
        blobs.record_blobs(s, list(plan.infos.values()))
        syncstate.save_files(s, pk, [f for f, _want in plan.files])
        out.files = len(plan.files)
        gone = [n for n in plan.have if n not in plan.listed]
        if gone:
            syncstate.tombstone_files(s, pk, gone)
        syncstate.set_listing_hash(s, pk, listing_hash(rec, self.opts.files))
        plan.pk = pk
        return out

    # --- files ---------------------------------------------------------------------

    def _file_actions(self, page: list[FileRecord], have: dict[str, Any], skipped: list[str],
                      listed: set[str]) -> list[tuple[FileRecord, bool]]:
        """The files of a listing page to (re)write, each with "download it?".

        Hostile names are skipped (and reported); unchanged files with their bytes
        cached (or not wanted) are left alone. Every safe name goes into ``listed``.
        """
        out: list[tuple[FileRecord, bool]] = []
        for f in page:
            try:
                validate_run_file_name(f.name)
            except UnsafePathError as exc:
                skipped.append(exc.message)
                continue
            listed.add(f.name)
            old = have.get(f.name)
            same_meta = old is not None and old[:3] == (f.md5, f.size_bytes, f.updated_at)
            cached = old is not None and old[3] is not None
            want = self.opts.files.wants(f.name, f.size_bytes) and bool(f.url)
            if same_meta and (cached or not want):
                continue
            out.append((f, want))
        return out

    def _download_all(self, files: list[FileRecord]) -> list[blobs.BlobInfo | BaseException]:
        """Download ``files`` concurrently (verified into the blob cache, not recorded).

        Each result is the blob, or the exception that download ended with. Done by the
        download child when there is one (it frees this interpreter for parsing and
        writing), else by the download threads.
        """
        if not files:
            return []
        if self._process is not None and len(files) > 1:
            try:
                return self._process.fetch(files)
            except ProcessUnavailable:
                pass  # the child is gone: this batch and the next ones download here
        pool = self._downloads
        if pool is None or len(files) == 1:
            return [_attempt(self.download, f) for f in files]
        futures = [pool.submit(_attempt, self.download, f) for f in files]
        return [fut.result() for fut in futures]

    # --- one run -----------------------------------------------------------------

    def _sync_run(self, rec: RunRecord, known: bool) -> RunOutcome:
        out = RunOutcome(rec.run_id, "updated" if known else "new")
        try:
            with self.store.transaction() as s:
                pk = runs.save_run(s, rec, only=_UPSTREAM_FIELDS)
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

        The changed files of a listing page are downloaded concurrently, each verified
        (size, md5) and renamed into the blob cache, before the one transaction that
        records the blobs and points the file rows at them.
        """
        with self.store.session() as s:
            have = syncstate.file_states(s, pk)
        listed: set[str] = set()
        for page in self.client.iter_files(self.entity, self.project, rec.run_id,
                                           per_page=self.opts.files_per_page):
            actions = self._file_actions(page, have, out.skipped, listed)
            wanted = [f for f, want in actions if want]
            got: dict[str, blobs.BlobInfo] = {}
            for f, result in zip(wanted, self._download_all(wanted), strict=True):
                if isinstance(result, BaseException):
                    raise result
                got[f.name] = result
            if not actions:
                continue
            for f, _want in actions:
                info = got.get(f.name)
                f.blob_hash = info.hash if info is not None else None
            with self.store.transaction() as s:
                blobs.record_blobs(s, list(got.values()))
                syncstate.save_files(s, pk, [f for f, _want in actions])
            out.files += len(actions)
            for info in got.values():
                out.bytes += info.size
                self.progress.bytes(info.size)
        gone = [n for n in have if n not in listed]
        if gone:
            with self.store.transaction() as s:
                syncstate.tombstone_files(s, pk, gone)


@dataclass
class _Item:
    """A run to sync: its listing record and its local pk (None if it is new)."""

    rec: RunRecord
    pk: int | None


@dataclass
class _Plan:
    """A run of a batch: what was asked for it, and what came back, until it is saved."""

    item: _Item
    ask: RunAsk
    have: dict[str, Any]  # stored file states, by name
    rows: list[tuple[int, str]] = field(default_factory=list)  # (step, codec text)
    events: list[dict[str, Any]] | None = None
    files: list[tuple[FileRecord, bool]] = field(default_factory=list)
    infos: dict[str, blobs.BlobInfo] = field(default_factory=dict)  # downloaded, by name
    listed: set[str] = field(default_factory=set)
    skipped: list[str] = field(default_factory=list)
    pk: int | None = None  # once saved

    @property
    def rec(self) -> RunRecord:
        return self.item.rec

    @property
    def status(self) -> str:
        return "updated" if self.item.pk is not None else "new"


def _attempt(download: Downloader, f: FileRecord) -> blobs.BlobInfo | BaseException:
    try:
        return download(f.url or "", f)
    except Exception as exc:  # reported per run by the caller
        return exc


def _reason(exc: BaseException) -> str:
    if isinstance(exc, MirrorError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


# The run columns a pull writes (all that upstream sends; never local-only ones).
_UPSTREAM_FIELDS = (
    "storage_id", "display_name", "state", "config", "summary", "system_metrics", "tags",
    "notes", "description", "group_name", "job_type", "commit", "host", "username",
    "user_name", "read_only", "created_at", "heartbeat_at", "updated_at",
    "history_line_count", "events_line_count", "file_count", "last_step", "history_keys",
    "sweep_name", "tombstoned",
)

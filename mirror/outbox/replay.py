"""Replaying the outbox upstream (`mirror push`): batched, merged, crash-safe.

One push, under the store's push lock (:mod:`mirror.outbox.lock`):

1. **Recover.** Ops a dead process left ``in_flight`` become due again; held ops (their
   run was running upstream) are re-checked.
2. **Claim** (one transaction): per run the due prefix of its ops, in id order, coalesced
   (:func:`mirror.outbox.ops.coalesce`: last value per key, earliest base; never into an op
   in flight, because in-flight ops block their run), marked ``in_flight``.
3. **Read fresh state** of a chunk of runs in ONE request (aliased ``project.run`` reads,
   :meth:`WandbClient.get_runs`), right before writing them, which keeps the window in
   which another writer can slip in between read and write as small as the protocol allows
   (W&B has no compare-and-set).
4. **Merge** per key (:mod:`mirror.outbox.merge`): apply / already there / conflict.
5. **Write** the chunk's runs with aliased ``upsertBucket`` mutations, many runs per request
   within a size bound; files per run in a thread pool (createRunFiles -> PUT ->
   markRunFilesUploaded; deletes by ids re-listed by name).
6. **Mark** each op from the outcome alone (style guide 10): confirmed -> ``done``;
   transient -> ``retry`` with full-jitter backoff or exactly the server's Retry-After;
   401 -> back to ``pending`` and the whole queue pauses with a message; terminal ->
   ``failed`` with the reason (a dead letter that never blocks anyone); a run still
   ``running`` upstream -> ``held`` unless ``force``.

Never applied twice: every attempt, first or not, starts with a fresh read and the merge,
so a write whose answer was lost (ambiguous outcome, a crash after sending) is found
already applied and acknowledged instead of being sent again; tags are set deltas and
files are compared by md5, so they are idempotent too. Ops are acknowledged only from a
server answer.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from mirror.errors import AuthError, EditRejected, MirrorError, NotFoundError
from mirror.outbox.lock import push_lock
from mirror.outbox.merge import FieldsMerge, merge_fields, merge_file
from mirror.outbox.ops import Coalesced, coalesce
from mirror.records import FileRecord, RunRecord
from mirror.store import Store, blobs
from mirror.store import outbox as outbox_store
from mirror.store.codec import dumps_wire
from mirror.store.outbox import (
    ACTIVE_STATES,
    FIELD_KINDS,
    FILE_KINDS,
    Mark,
    OpRecord,
    RunRef,
)

__all__ = [
    "PushOptions",
    "PushReport",
    "Pusher",
    "Upstream",
    "classify",
    "plan_push",
    "push",
]

log = logging.getLogger("mirror.outbox")


class Upstream(Protocol):
    """What replay needs from :class:`mirror.upstream.client.WandbClient`."""

    def get_runs(self, paths: Sequence[tuple[str, str, str]]) -> list[RunRecord | None]: ...

    def upsert_buckets(self, inputs: Sequence[Mapping[str, Any]]) -> Sequence[Any]: ...

    def iter_files(
        self, entity: str, project: str, run_id: str, *, names: Sequence[str] | None = ...,
        per_page: int = ...,
    ) -> Iterable[list[FileRecord]]: ...

    def create_run_files(
        self, entity: str, project: str, run_id: str, names: Sequence[str]
    ) -> tuple[dict[str, str], dict[str, str]]: ...

    def upload(self, url: str, fileobj: Any, headers: Mapping[str, str] | None = ..., *,
               resend: bool = ...) -> None: ...

    def mark_run_files_uploaded(
        self, entity: str, project: str, run_id: str, names: Sequence[str]
    ) -> None: ...

    def delete_files(self, file_ids: Sequence[str], project_id: int | str | None) -> None: ...

    def server_features(self) -> dict[str, bool]: ...


@dataclass
class PushOptions:
    """How a push batches, retries and waits.

    ``batch_runs`` runs are read in one request and written in one (or more, when their
    documents exceed ``batch_bytes``). A transient failure waits ``Retry-After`` when the
    server sent one, else ``uniform(0, min(max_delay, base_delay * 2**(attempts-1)))``;
    after ``max_attempts`` an op becomes a dead letter. One push keeps going while ops are
    due within ``max_wait`` seconds, then leaves the rest for the next push.
    """

    force: bool = False
    batch_runs: int = 50
    batch_bytes: int = 4 * 1024 * 1024
    workers: int = 4
    max_attempts: int = 12
    base_delay: float = 2.0
    max_delay: float = 300.0
    max_wait: float = 60.0
    runs_per_round: int = 1000


@dataclass
class PushReport:
    """What one push did (also the `mirror push --json` output)."""

    started_at: float = 0.0
    seconds: float = 0.0
    runs: int = 0
    ops: int = 0
    coalesced: int = 0
    acked: int = 0
    written: int = 0
    already: int = 0
    conflicts: int = 0
    dead: int = 0
    held: int = 0
    retrying: int = 0
    recovered: int = 0
    paused: str | None = None
    calls: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Everything claimed was acknowledged: nothing paused, dead, conflicted or waiting."""
        return (
            self.paused is None and not self.dead and not self.conflicts and not self.retrying
            and not self.held
        )

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out


def classify(error: BaseException) -> str:
    """``auth``, ``ambiguous``, ``transient`` or ``terminal``: the only input of marking.

    Ambiguous means the request may have been applied (connection lost after sending, 5xx):
    it is retried like a transient failure, and the retry's fresh read is the read-back.
    """
    if isinstance(error, AuthError):
        return "auth"
    if isinstance(error, MirrorError) and error.transient:
        return "ambiguous" if getattr(error, "maybe_applied", False) else "transient"
    if isinstance(error, OSError):
        return "transient"
    return "terminal"


@dataclass
class _Work:
    """One run's claimed ops (coalesced, in flight)."""

    ref: RunRef
    ops: list[OpRecord]

    def of(self, kinds: Sequence[str]) -> list[OpRecord]:
        return [op for op in self.ops if op.kind in kinds]


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), max(1, size)):
        yield items[i : i + max(1, size)]


class Pusher:
    """Replays one store's outbox to one upstream. Use :meth:`run` (or :func:`push`).

    ``clock``, ``sleep`` and ``rng`` are injectable so tests neither sleep nor guess.
    """

    def __init__(
        self,
        store: Store,
        client: Upstream,
        options: PushOptions | None = None,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        base_url: str | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.opts = options or PushOptions()
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.base_url = base_url
        self.report = PushReport()
        self._lock = threading.RLock()
        self._skip: set[int] = set()
        self._features: dict[str, bool] | None = None

    # --- the loop ------------------------------------------------------------------------

    def run(self) -> PushReport:
        report = self.report
        report.started_at = self.clock()
        with push_lock(self.store):
            with self.store.transaction() as s:
                report.recovered = outbox_store.recover_in_flight(s, now=self.clock())
                outbox_store.release_held(s, now=self.clock())
            deadline = report.started_at + self.opts.max_wait
            rounds = 0
            claimed_while_due = False
            while report.paused is None:
                # The first round always runs; later ones (ops that came due again after a
                # backoff) only within max_wait, so `max_wait=0` is exactly one round.
                if rounds and self.clock() > deadline:
                    break
                works = self._claim()
                rounds += 1
                if works:
                    claimed_while_due = False
                    self._round(works)
                    continue
                with self.store.session() as s:
                    due = outbox_store.next_due(s)
                now = self.clock()
                # Nothing claimable now: wait for the next op's backoff to end, but only if
                # it ends within max_wait.
                if due is None or due > deadline:
                    break
                if due <= now:
                    # Due already: its backoff ended between the claim and now (claim once
                    # more), or it belongs to a run this push set aside, e.g. held (stop).
                    if claimed_while_due:
                        break
                    claimed_while_due = True
                    continue
                self.sleep(due - now)
            self._finish()
        return report

    def _finish(self) -> None:
        report = self.report
        with self.store.session() as s:
            counts = outbox_store.op_counts(s)
        report.retrying = counts.get("retry", 0) + counts.get("in_flight", 0)
        report.held = counts.get("held", 0)
        report.seconds = round(self.clock() - report.started_at, 3)
        with self.store.transaction() as s:
            outbox_store.set_last_push(s, {
                "at": report.started_at, "seconds": report.seconds, "ok": report.ok,
                "base_url": self.base_url, "acked": report.acked,
                "conflicts": report.conflicts, "dead": report.dead,
                "retrying": report.retrying, "held": report.held, "paused": report.paused,
            })

    def _claim(self) -> list[_Work]:
        """Take the due prefix of each run's ops, coalesced, and mark it in flight."""
        now = self.clock()
        works: list[_Work] = []
        with self.store.transaction() as s:
            due = outbox_store.due_ops(s, now)
            chosen: dict[int, list[Coalesced]] = {}
            for run_pk, ops in due.items():
                if run_pk in self._skip:
                    continue
                if len(chosen) >= self.opts.runs_per_round:
                    break
                # A run that exists only locally is uploaded first, alone: its other ops
                # need the run to exist upstream.
                cut = next((i for i, op in enumerate(ops) if op.kind == "create_run"), None)
                chosen[run_pk] = coalesce(ops[:1] if cut == 0 else ops[:cut])
            survivors = [c for merged in chosen.values() for c in merged]
            folded = [c for c in survivors if c.merged]
            outbox_store.update_payloads(
                s, [(c.op.id, c.op.kind, c.op.payload, c.op.base) for c in folded])
            outbox_store.delete_ops(s, [i for c in folded for i in c.merged])
            outbox_store.mark_many(
                s, [Mark(c.op.id, "in_flight", attempts_delta=1) for c in survivors], now=now)
            for c in survivors:
                c.op.attempts += 1
                c.op.state = "in_flight"
            self.report.coalesced += sum(len(c.merged) for c in folded)
            refs = outbox_store.run_refs(s, chosen)
        for run_pk, merged in chosen.items():
            works.append(_Work(refs[run_pk], [c.op for c in merged]))
        self.report.runs += len(works)
        self.report.ops += sum(len(w.ops) for w in works)
        return works

    def _round(self, works: list[_Work]) -> None:
        for work in [w for w in works if w.ops[0].kind == "create_run"]:
            self._create(work)
        rest = [w for w in works if w.ops[0].kind != "create_run"]
        for chunk in _chunks(rest, self.opts.batch_runs):
            if self.report.paused is not None:
                self._release(list(chunk))
                continue
            self._chunk(list(chunk))

    # --- one chunk of runs: fresh read, merge, write ---------------------------------------

    def _chunk(self, chunk: list[_Work]) -> None:
        paths = [(w.ref.entity, w.ref.project, w.ref.run_id) for w in chunk]
        try:
            fresh = self.client.get_runs(paths)
            self._count("read")
        except MirrorError as exc:
            self._failed([op for w in chunk for op in w.ops], exc)
            return
        writes: list[tuple[_Work, RunRecord, list[OpRecord], FieldsMerge]] = []
        file_jobs: list[tuple[_Work, list[OpRecord]]] = []
        for work, remote in zip(chunk, fresh, strict=True):
            if remote is None:
                self._dead(work.ops, f"run {work.ref.path} does not exist upstream (deleted, "
                           "or never uploaded)")
                continue
            if remote.state == "running" and not self.opts.force:
                self._hold(work)
                continue
            fields = work.of(FIELD_KINDS)
            if fields:
                merged = merge_fields(remote, fields)
                if merged.fields:
                    writes.append((work, remote, fields, merged))
                else:
                    self._ack_fields(work, fields, merged)
            files = work.of(FILE_KINDS)
            if files:
                file_jobs.append((work, files))
        self._write(writes)
        if file_jobs and self.report.paused is None:
            self._files(file_jobs)
        elif file_jobs:
            self._release([w for w, _ in file_jobs], kinds=FILE_KINDS)

    def _write(self, writes: list[tuple[_Work, RunRecord, list[OpRecord], FieldsMerge]]) -> None:
        batch: list[tuple[_Work, RunRecord, list[OpRecord], FieldsMerge]] = []
        inputs: list[dict[str, Any]] = []
        size = 0
        for item in writes:
            work, remote, _ops, merged = item
            entry = self._input(work.ref, remote, merged)
            entry_size = len(dumps_wire(entry))
            if batch and size + entry_size > self.opts.batch_bytes:
                self._send(batch, inputs)
                batch, inputs, size = [], [], 0
            batch.append(item)
            inputs.append(entry)
            size += entry_size
        if batch:
            self._send(batch, inputs)

    @staticmethod
    def _input(ref: RunRef, remote: RunRecord, merged: FieldsMerge) -> dict[str, Any]:
        if remote.storage_id:
            return {"id": remote.storage_id, **merged.fields}
        return {"name": ref.run_id, "modelName": ref.project, "entityName": ref.entity,
                **merged.fields}

    def _send(
        self,
        batch: list[tuple[_Work, RunRecord, list[OpRecord], FieldsMerge]],
        inputs: list[dict[str, Any]],
    ) -> None:
        if self.report.paused is not None:
            self._release([w for w, *_ in batch], kinds=FIELD_KINDS)
            return
        try:
            outcomes = self.client.upsert_buckets(inputs)
            self._count("write")
        except MirrorError as exc:
            self._failed([op for _, _, ops, _ in batch for op in ops], exc)
            return
        confirmed: list[tuple[_Work, list[OpRecord], FieldsMerge]] = []
        for (work, _remote, ops, merged), outcome in zip(batch, outcomes, strict=True):
            error = getattr(outcome, "error", None)
            if error is None and getattr(outcome, "bucket", None):
                confirmed.append((work, ops, merged))
            else:
                self._failed(ops, error or EditRejected("the server did not confirm the write"))
        self._ack_fields_many(confirmed)

    # --- files ---------------------------------------------------------------------------

    def _files(self, jobs: list[tuple[_Work, list[OpRecord]]]) -> None:
        workers = max(1, min(self.opts.workers, len(jobs)))
        if workers == 1:
            for work, ops in jobs:
                self._run_files(work, ops)
            return
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mirror-push") as pool:
            for future in [pool.submit(self._run_files, w, ops) for w, ops in jobs]:
                future.result()

    def _run_files(self, work: _Work, ops: list[OpRecord]) -> None:
        """One run's file ops, in order: re-list by name, then uploads, then deletes."""
        ref = work.ref
        if self.report.paused is not None:
            self._release([work], kinds=FILE_KINDS)
            return
        names = sorted({str(op.payload["name"]) for op in ops})
        remote: dict[str, FileRecord] = {}
        try:
            for page in self.client.iter_files(ref.entity, ref.project, ref.run_id,
                                               names=names, per_page=max(1, len(names))):
                remote.update((f.name, f) for f in page)
            self._count("files")
        except MirrorError as exc:
            self._failed(ops, exc)
            return
        uploads: list[OpRecord] = []
        deletes: list[OpRecord] = []
        for op in ops:
            name = str(op.payload["name"])
            verdict = merge_file(op, remote.get(name))
            if verdict == "already":
                self._ack([op], already=1)
            elif verdict == "conflict":
                have = remote.get(name)
                self._conflict_file(op, have.md5 if have is not None else None)
            elif verdict == "upload":
                uploads.append(op)
            else:
                deletes.append(op)
        if uploads:
            self._upload(ref, uploads)
        if deletes:
            self._delete(ref, deletes, remote)

    def _upload(self, ref: RunRef, ops: list[OpRecord]) -> None:
        names = [str(op.payload["name"]) for op in ops]
        try:
            urls, headers = self.client.create_run_files(ref.entity, ref.project, ref.run_id,
                                                         names)
            self._count("files")
        except MirrorError as exc:
            self._failed(ops, exc)
            return
        sent: list[OpRecord] = []
        for op in ops:
            url = urls.get(str(op.payload["name"]))
            if not url:
                self._dead([op], f"the server gave no upload URL for {op.payload['name']!r}")
                continue
            try:
                with blobs.open_blob(self.store, str(op.payload["blob"])) as fh:
                    # An ambiguous PUT is read back by the next attempt, never re-sent.
                    self.client.upload(url, fh, headers, resend=False)
                self._count("files")
            except FileNotFoundError:
                self._dead([op], f"the local copy of {op.payload['name']!r} is gone from the "
                           "blob cache")
                continue
            except MirrorError as exc:
                self._failed([op], exc)
                continue
            sent.append(op)
        if not sent:
            return
        if self._mark_needed():
            try:
                self.client.mark_run_files_uploaded(
                    ref.entity, ref.project, ref.run_id, [str(op.payload["name"]) for op in sent]
                )
                self._count("files")
            except MirrorError as exc:
                self._failed(sent, exc)
                return
        self._ack(sent, written=len(sent))

    def _mark_needed(self) -> bool:
        """Servers with ``MARK_RUN_FILES_UPLOADED`` need the commit call (asked once)."""
        with self._lock:
            if self._features is None:
                try:
                    self._features = self.client.server_features()
                    self._count("read")
                except MirrorError:
                    self._features = {}  # as wandb-core: a failing query disables features
            return bool(self._features.get("MARK_RUN_FILES_UPLOADED"))

    def _delete(self, ref: RunRef, ops: list[OpRecord], remote: dict[str, FileRecord]) -> None:
        ids: list[str] = []
        ready: list[OpRecord] = []
        for op in ops:
            file_id = remote[str(op.payload["name"])].upstream_id
            if not file_id:
                self._dead([op], f"the server lists {op.payload['name']!r} without an id")
                continue
            ids.append(file_id)
            ready.append(op)
        if not ready:
            return
        try:
            self.client.delete_files(ids, _project_id(ref.project_internal_id))
            self._count("files")
        except (NotFoundError, EditRejected) as exc:
            if isinstance(exc, NotFoundError) or exc.status == 404:
                self._ack(ready, already=len(ready))  # gone already: 404 counts as done
            else:
                self._failed(ready, exc)
            return
        except MirrorError as exc:
            self._failed(ready, exc)
            return
        self._ack(ready, written=len(ready))

    # --- runs that exist only locally --------------------------------------------------------

    def _create(self, work: _Work) -> None:
        """Upload a local run (MLflow import, local logging) as a whole, then its edits."""
        try:
            from mirror.outbox.upload_run import upload_run  # owned by the importers' work
        except ImportError:
            self._skip.add(work.ref.pk)
            reason = "uploading runs created locally is not available in this version"
            with self.store.transaction() as s:
                outbox_store.mark_many(s, [Mark(op.id, "pending", error=reason,
                                                attempts_delta=-1) for op in work.ops])
            self._warn(f"{work.ref.path}: {reason}; its edits wait")
            return
        try:
            upload_run(self.store, self.client, work.ref.pk)  # type: ignore[arg-type]
            self._count("create")
        except MirrorError as exc:
            self._failed(work.ops, exc)
            return
        self._ack(work.ops, written=1)

    # --- marking ---------------------------------------------------------------------------

    def _ack_fields(self, work: _Work, ops: list[OpRecord], merged: FieldsMerge) -> None:
        self._ack_fields_many([(work, ops, merged)])

    def _ack_fields_many(self, items: list[tuple[_Work, list[OpRecord], FieldsMerge]]) -> None:
        """Confirmed (or nothing to send): done, with conflicted keys recorded and parked.

        One transaction for a whole written batch.
        """
        if not items:
            return
        now = self.clock()
        marks: list[Mark] = []
        with self.store.transaction() as s:
            for _work, ops, merged in items:
                for op in ops:
                    conflicts = [c for c in merged.conflicts if c.op_id == op.id]
                    if not conflicts:
                        marks.append(Mark(op.id, "done"))
                        continue
                    for c in conflicts:
                        outbox_store.add_conflict(
                            s, op_id=op.id, run_pk=op.run_pk, kind=c.kind, key=c.key,
                            base=c.base, local=c.local, remote=c.remote, now=now,
                        )
                    conflicted = [c.key for c in conflicts]
                    if len(conflicted) == _n_keys(op):
                        outbox_store.mark(
                            s, op.id, "conflict", now=now,
                            error=f"changed upstream since the edit: {', '.join(conflicted)}",
                        )
                    else:
                        outbox_store.mark(s, op.id, "done", now=now,
                                          payload={**op.payload, "conflicted": conflicted})
            outbox_store.mark_many(s, marks, now=now)
        for work, ops, merged in items:
            with self._lock:
                r = self.report
                r.conflicts += len(merged.conflicts)
                r.written += sum(len(v) for v in merged.written.values())
                r.already += sum(len(v) for v in merged.already.values())
                r.acked += sum(1 for op in ops if len(merged.conflicted(op.id)) < _n_keys(op))
            if merged.conflicts:
                names = ", ".join(f"{c.kind}.{c.key}" for c in merged.conflicts)
                self._warn(f"{work.ref.path}: conflict on {names} (changed upstream since the "
                           "edit); see `mirror outbox list --state conflict`")

    def _conflict_file(self, op: OpRecord, remote_md5: str | None) -> None:
        now = self.clock()
        with self.store.transaction() as s:
            outbox_store.add_conflict(
                s, op_id=op.id, run_pk=op.run_pk, kind=op.kind, key=str(op.payload["name"]),
                base=op.base.get("md5"),
                local=op.payload.get("md5") if op.kind == "file_put" else None,
                remote=remote_md5, now=now,
            )
            outbox_store.mark(s, op.id, "conflict", now=now,
                              error="the file changed upstream since the edit")
        with self._lock:
            self.report.conflicts += 1

    def _ack(self, ops: list[OpRecord], *, written: int = 0, already: int = 0) -> None:
        with self.store.transaction() as s:
            outbox_store.mark_many(s, [Mark(op.id, "done") for op in ops], now=self.clock())
        with self._lock:
            self.report.acked += len(ops)
            self.report.written += written
            self.report.already += already

    def _dead(self, ops: list[OpRecord], reason: str) -> None:
        with self.store.transaction() as s:
            outbox_store.mark_many(s, [Mark(op.id, "failed", error=reason) for op in ops],
                                   now=self.clock())
        with self._lock:
            self.report.dead += len(ops)
            self.report.errors.append(reason)

    def _hold(self, work: _Work) -> None:
        self._skip.add(work.ref.pk)
        reason = (f"run {work.ref.path} is still running upstream: its SDK may overwrite "
                  "the edit at finish; held (push --force writes anyway)")
        with self.store.transaction() as s:
            outbox_store.mark_many(
                s, [Mark(op.id, "held", error=reason, attempts_delta=-1) for op in work.ops],
                now=self.clock())
        self._warn(reason)

    def _release(self, works: list[_Work], kinds: Sequence[str] | None = None) -> None:
        """Give claimed ops back untouched (the queue paused before they were sent)."""
        with self.store.transaction() as s:
            outbox_store.mark_many(s, [
                Mark(op.id, "pending", error=self.report.paused, attempts_delta=-1)
                for work in works for op in work.ops if kinds is None or op.kind in kinds
            ], now=self.clock())

    def _failed(self, ops: list[OpRecord], error: BaseException) -> None:
        """Mark ops from the error's class alone (see :func:`classify`)."""
        kind = classify(error)
        message = str(getattr(error, "message", None) or error)
        now = self.clock()
        if kind == "auth":
            with self._lock:
                if self.report.paused is None:
                    self.report.paused = f"{message} (the queue is paused; nothing was lost)"
            with self.store.transaction() as s:
                outbox_store.mark_many(s, [Mark(op.id, "pending", error=message,
                                                attempts_delta=-1) for op in ops], now=now)
            return
        if kind == "terminal":
            self._dead(ops, message)
            return
        hinted = getattr(error, "retry_after", None)
        dead: list[OpRecord] = []
        marks: list[Mark] = []
        note = "outcome unknown; read back before resend: " if kind == "ambiguous" else ""
        # One backoff per run: a run's ops come due together and go out in one claim (one
        # read back, one write), as they were sent.
        delays: dict[int, float] = {}
        for op in ops:
            if op.attempts >= self.opts.max_attempts:
                dead.append(op)
                continue
            if op.run_pk not in delays:
                delays[op.run_pk] = (float(hinted) if isinstance(hinted, int | float)
                                     else self._backoff(op))
            marks.append(Mark(op.id, "retry", error=note + message,
                              next_attempt_at=now + delays[op.run_pk]))
        with self.store.transaction() as s:
            outbox_store.mark_many(s, marks, now=now)
        if dead:
            self._dead(dead, f"gave up after {self.opts.max_attempts} attempts: {message}")

    def _backoff(self, op: OpRecord) -> float:
        ceiling = min(self.opts.max_delay, self.opts.base_delay * 2.0 ** max(0, op.attempts - 1))
        with self._lock:
            return self.rng.uniform(0.0, ceiling)

    def _count(self, what: str) -> None:
        with self._lock:
            self.report.calls[what] = self.report.calls.get(what, 0) + 1

    def _warn(self, message: str) -> None:
        # INFO: the report carries the warning to whoever runs the push (CLI, daemon).
        log.info("%s", message)
        with self._lock:
            self.report.warnings.append(message)


def _n_keys(op: OpRecord) -> int:
    return 1 if op.kind == "tags" else len(op.payload.get("keys", {}))


def _project_id(value: str | None) -> int | None:
    """``deleteFiles(projectId:)`` is an Int; a store may hold an opaque id instead."""
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def push(
    store: Store,
    client: Upstream,
    options: PushOptions | None = None,
    **kwargs: Any,
) -> PushReport:
    """Replay every due op of ``store`` to ``client``'s server; see :class:`Pusher`."""
    return Pusher(store, client, options, **kwargs).run()


# --- the plan (dry run) ------------------------------------------------------------------


def plan_push(store: Store, options: PushOptions | None = None) -> dict[str, Any]:
    """What a push would send, computed offline: runs, keys, files and requests.

    Requests are the minimum for the fields (one fresh read and one write per
    ``batch_runs`` runs; big documents may split a write) plus, per run with file ops, one
    listing, ``createRunFiles`` + one PUT per file + ``markRunFilesUploaded`` for uploads,
    and one ``deleteFiles`` for deletes.
    """
    opts = options or PushOptions()
    with store.session() as s:
        active = outbox_store.list_ops(s, states=list(ACTIVE_STATES))
        by_run: dict[int, list[OpRecord]] = {}
        for op in active:
            by_run.setdefault(op.run_pk, []).append(op)
        refs = outbox_store.run_refs(s, by_run)
    runs: list[dict[str, Any]] = []
    field_runs = file_requests = 0
    for run_pk, ops in by_run.items():
        merged = [c.op for c in coalesce(ops)]
        entry: dict[str, Any] = {"run": refs[run_pk].path if run_pk in refs else run_pk,
                                 "ops": len(ops)}
        puts, deletes = [], []
        for op in merged:
            if op.kind in ("summary", "config", "meta"):
                entry[op.kind] = sorted(op.payload.get("keys", {}))
            elif op.kind == "tags":
                entry["tags"] = {"add": op.payload.get("add", []),
                                 "remove": op.payload.get("remove", [])}
            elif op.kind == "file_put":
                puts.append(op.payload["name"])
            elif op.kind == "file_delete":
                deletes.append(op.payload["name"])
            elif op.kind == "create_run":
                entry["create"] = True
        if puts:
            entry["upload"] = puts
            file_requests += 3 + len(puts)
        if deletes:
            entry["delete"] = deletes
            file_requests += 1 + (0 if puts else 1)
        if any(op.kind in FIELD_KINDS for op in merged):
            field_runs += 1
        runs.append(entry)
    batches = math.ceil(len(by_run) / max(1, opts.batch_runs))
    writes = math.ceil(field_runs / max(1, opts.batch_runs))
    return {
        "runs": runs,
        "ops": len(active),
        "requests": {"read": batches, "write": writes, "files": file_requests,
                     "total": batches + writes + file_requests},
    }

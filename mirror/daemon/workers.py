"""The daemon's network workers: probe, pull and push (the local ones: :mod:`.local`).

Each is a :class:`~mirror.daemon.threads.StoppableThread` with the same loop: wait for
its trigger or its next deadline, do one idempotent unit of work, record the outcome in
the status board. None of them keeps state that matters across a crash: cursors, ops and
import fingerprints are in the store, so a SIGKILL between any two lines only costs the
unit in flight (crash-only design).

Network discipline: while :class:`~mirror.daemon.backoff.Connectivity` says offline,
pull, push and upload do nothing (ops keep their retry budget, the log stays quiet); the
probe alone asks the server, with capped exponential backoff, and wakes everyone when it
answers. Local work (the drop folder, MLflow imports into the store) goes on offline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from mirror.daemon.backoff import Connectivity, is_offline_error
from mirror.daemon.status import StatusBoard
from mirror.daemon.threads import StoppableThread
from mirror.errors import AuthError, MirrorError
from mirror.settings import Settings
from mirror.store import Store, syncstate
from mirror.store import outbox as outbox_store

__all__ = [
    "ProbeWorker",
    "PullWorker",
    "PushWorker",
    "StopAwareClient",
    "Stopping",
    "WorkerContext",
    "ops_signature",
]

log = logging.getLogger("mirror.daemon")


class Client(Protocol):
    """What the workers need of :class:`mirror.upstream.client.WandbClient` directly
    (sync, replay and upload take the client itself)."""

    @property
    def base_url(self) -> str: ...

    def viewer(self) -> Any: ...


@dataclass
class WorkerContext:
    """Everything the workers share. ``client`` is thread-safe and shared."""

    store: Store
    settings: Settings
    client: Any  # WandbClient (typed Any: sync/replay/upload each declare their Protocol)
    probe_client: Client
    conn: Connectivity
    status: StatusBoard
    interval: float
    sync_workers: int = 4
    full_every: int = 12
    projects: tuple[str, ...] = ()

    def check_online(self) -> bool:
        """Ask the server once, now (after an ambiguous failure): update connectivity."""
        try:
            self.probe_client.viewer()
        except AuthError:
            self.conn.succeeded()  # reachable; the key is the problem (reported elsewhere)
            return True
        except MirrorError as exc:
            if is_offline_error(exc):
                self.conn.failed(exc)
                return False
            self.conn.succeeded()
            return True
        self.conn.succeeded()
        return True

    def key_owner(self) -> str | None:
        """The API key's owner: where runs go when no entity is configured. Remembered in
        the status file (``mlflow_entity``, kept across restarts); else asked once the
        server is reachable. None while offline and never asked."""
        previous = self.status.get().get("mlflow_entity")
        if isinstance(previous, str) and previous:
            return previous
        if not self.conn.online:
            return None
        try:
            owner = str(self.probe_client.viewer().entity or "") or None
        except MirrorError as exc:
            if is_offline_error(exc):
                self.conn.failed(exc)
            return None
        if owner:
            self.status.update(mlflow_entity=owner)
        return owner

    def next_attempt(self, worker: str, at: float | None) -> None:
        self.status.update("next_attempt", **{worker: at})


def _now() -> float:
    return time.time()


class Stopping(MirrorError):
    """The daemon is stopping: the request was not sent (transient: redone next time)."""

    transient = True


class StopAwareClient:
    """The client, for one pull: every call, and every page of a listing, first checks
    whether the daemon is stopping.

    A pull of a large project would otherwise run to its end after SIGTERM. Cut short
    this way, the runs in flight fail, so their listing hash is not committed and the
    project's watermark does not move: the next pull redoes exactly them (the engine's
    own crash rule), and the daemon stops within one request.
    """

    def __init__(self, client: Any, stopped: threading.Event) -> None:
        self._client = client
        self._stopped = stopped

    def _check(self) -> None:
        if self._stopped.is_set():
            raise Stopping("the daemon is stopping")

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._check()
            result = attr(*args, **kwargs)
            return self._pages(result) if name.startswith("iter_") else result

        return call

    def _pages(self, pages: Iterable[Any]) -> Iterator[Any]:
        for page in pages:
            self._check()
            yield page


# --- probe ---------------------------------------------------------------------------------


class ProbeWorker(StoppableThread):
    """While offline, asks the server (one cheap query) at backoff times; idle online."""

    def __init__(self, ctx: WorkerContext) -> None:
        super().__init__("mirror-daemon-probe")
        self.ctx = ctx

    def next_delay(self) -> float | None:
        return self.ctx.conn.probe_delay()

    def tick(self, fired: bool) -> None:
        delay = self.ctx.conn.probe_delay()
        if delay is None:
            self.ctx.next_attempt("probe", None)
            return
        if delay > 0:
            self.ctx.next_attempt("probe", _now() + delay)
            return
        self.ctx.check_online()
        nxt = self.ctx.conn.probe_delay()
        self.ctx.next_attempt("probe", None if nxt is None else _now() + nxt)


# --- pull ----------------------------------------------------------------------------------


class PullWorker(StoppableThread):
    """Pulls the configured projects every interval (a full listing every
    ``full_every`` pulls, and on the first one after a start: anti-entropy finds
    deletions and upstream edits that moved no timestamp)."""

    def __init__(self, ctx: WorkerContext) -> None:
        super().__init__("mirror-daemon-pull")
        self.ctx = ctx
        self.next_at = _now()
        self.pulls = 0

    def next_delay(self) -> float | None:
        if not self.ctx.conn.online:
            return None  # the online listener pokes us
        return max(0.0, self.next_at - _now())

    def targets(self, client: Any) -> list[tuple[str, str]]:
        ctx = self.ctx
        if not ctx.projects:
            with ctx.store.session() as s:
                return syncstate.synced_projects(s, client.base_url)
        out: list[tuple[str, str]] = []
        for target in ctx.projects:
            parts = [p for p in target.strip("/").split("/") if p]
            if len(parts) == 2:
                out.append((parts[0], parts[1]))
            else:
                for page in client.iter_projects(parts[0]):
                    out.extend((p.entity, p.name) for p in page)
        return list(dict.fromkeys(out))

    def tick(self, fired: bool) -> None:
        ctx = self.ctx
        now = _now()
        if not ctx.conn.online:
            ctx.next_attempt("pull", None)
            return
        if now < self.next_at and not fired:
            return
        from mirror.sync.engine import ProjectSync, SyncOptions
        from mirror.sync.runner import make_downloader

        started = now
        full = self.pulls % max(1, ctx.full_every) == 0
        client: Any = StopAwareClient(ctx.client, self.stopped_event)  # duck-typed WandbClient
        projects: dict[str, Any] = {}
        errors: list[str] = []
        offline = False
        try:
            targets = self.targets(client)
        except Stopping:
            return
        except MirrorError as exc:
            targets = []
            offline = self._failed(exc, errors, "listing projects")
        for entity, project in targets:
            if not self.should_keep_running() or offline:
                break
            job = ProjectSync(ctx.store, client, make_downloader(ctx.store, client),
                              ctx.client.base_url, entity, project,
                              SyncOptions(full=full, workers=ctx.sync_workers))
            try:
                report = job.run()
            except Stopping:
                return
            except MirrorError as exc:
                offline = self._failed(exc, errors, f"{entity}/{project}")
                continue
            if not self.should_keep_running():
                return  # runs cut short by the stop are redone by the next pull
            projects[f"{entity}/{project}"] = {
                "listed": report.listed, "synced": len(report.outcomes) - len(report.failed),
                "failed": len(report.failed), "rows": report.rows, "bytes": report.bytes,
                "tombstoned": report.tombstoned,
            }
            for o in report.failed[:3]:
                errors.append(f"{entity}/{project}/{o.run_id}: {o.error}")
        if not offline and errors:
            offline = not ctx.check_online()  # runs failing one by one: is it the network?
        elif not offline:
            ctx.conn.succeeded()
        if offline:
            ctx.status.update("last_pull", at=started, ok=False, error=errors[0] if errors
                              else "offline", seconds=round(_now() - started, 3))
            ctx.next_attempt("pull", None)
            return
        self.pulls += 1
        self.next_at = _now() + ctx.interval
        ctx.status.update("last_pull", at=started, ok=not errors, full=full,
                          seconds=round(_now() - started, 3), projects=projects,
                          error=errors[0] if errors else None)
        if errors:
            ctx.status.error("pull", errors[0])
            self.errors.log(logging.WARNING, f"pull: {errors[0]}")
        else:
            ctx.status.clear_error("pull")
        ctx.next_attempt("pull", self.next_at)
        changed = {k: v for k, v in projects.items() if v["synced"] or v["tombstoned"]}
        if changed:  # an unchanged project is the common case: not worth a line per interval
            log.info("pull: %s", ", ".join(
                f"{k}: {v['synced']} run(s), {v['rows']} row(s)" for k, v in changed.items()))

    def _failed(self, exc: MirrorError, errors: list[str], what: str) -> bool:
        errors.append(f"{what}: {exc.message}")
        self.ctx.status.error("pull", f"{what}: {exc.message}")
        if is_offline_error(exc):
            self.ctx.conn.failed(exc)
            return True
        self.errors.log(logging.WARNING, f"pull {what}: {exc.message}")
        return False


# --- push ----------------------------------------------------------------------------------


def ops_signature(store: Store) -> tuple[tuple[str, int], ...]:
    """Counts of outbox ops by state: changes whenever anyone enqueues or settles an op."""
    with store.session() as s:
        return tuple(sorted(outbox_store.op_counts(s).items()))


class PushWorker(StoppableThread):
    """Replays the outbox (``mirror.outbox.replay.push``) and uploads imported runs.

    Runs when poked (a local edit, a drop, an import, the network returning), when the
    earliest op waiting out a backoff becomes due, and every interval. Does nothing, and
    sends nothing, when there is nothing to send.
    """

    def __init__(self, ctx: WorkerContext) -> None:
        super().__init__("mirror-daemon-push")
        self.ctx = ctx
        self.next_at = _now()
        self.due_at: float | None = None
        self.last_signature: tuple[tuple[str, int], ...] | None = None

    def next_delay(self) -> float | None:
        if not self.ctx.conn.online:
            return None
        wake = self.next_at if self.due_at is None else min(self.next_at, self.due_at)
        return max(0.0, wake - _now())

    def _options(self) -> Any:
        from mirror.outbox.replay import PushOptions

        interval = self.ctx.interval
        # Never sleep inside a push (max_wait=0: the worker itself waits for the next
        # due op), and keep op backoff within one interval, so that everything left over
        # from an outage goes out at most one interval after the network returns.
        return PushOptions(max_wait=0.0, base_delay=min(2.0, interval / 2),
                           max_delay=max(0.05, min(300.0, interval)))

    def tick(self, fired: bool) -> None:
        ctx = self.ctx
        now = _now()
        if not ctx.conn.online:
            ctx.next_attempt("push", None)
            return
        from mirror.outbox.upload_run import pending_uploads

        with ctx.store.session() as s:
            counts = outbox_store.op_counts(s)
            self.due_at = outbox_store.next_due(s)
        signature = tuple(sorted(counts.items()))
        timer = now >= self.next_at
        ops_due = bool(counts.get("pending") or counts.get("in_flight")) or (
            self.due_at is not None and self.due_at <= now)
        ops_due = ops_due or (timer and bool(counts.get("held")))
        uploads = pending_uploads(ctx.store, ctx.client.base_url) if (fired or timer) else []
        if timer:
            self.next_at = now + ctx.interval
        if not ops_due and not uploads:
            ctx.next_attempt("push", self._next_wake())
            return
        self.last_signature = signature
        started = _now()
        summary: dict[str, Any] = {"at": started}
        ok = True
        if ops_due:
            ok = self._push(summary) and ok
        if uploads and ctx.conn.online and self.should_keep_running():
            ok = self._upload(uploads, summary) and ok
        with ctx.store.session() as s:
            self.due_at = outbox_store.next_due(s)
        summary["seconds"] = round(_now() - started, 3)
        summary["ok"] = ok
        ctx.status.replace("last_push", summary)
        if ok:
            ctx.status.clear_error("push")
        ctx.next_attempt("push", self._next_wake() if ctx.conn.online else None)

    def _next_wake(self) -> float:
        return self.next_at if self.due_at is None else min(self.next_at, self.due_at)

    def _push(self, summary: dict[str, Any]) -> bool:
        from mirror.outbox.lock import PushBusyError
        from mirror.outbox.replay import push

        ctx = self.ctx
        try:
            report = push(ctx.store, ctx.client, self._options(), sleep=self.sleep,
                          base_url=ctx.client.base_url)
        except PushBusyError as exc:  # a `mirror push` runs right now: let it, come back
            summary["error"] = exc.message
            self.next_at = min(self.next_at, _now() + min(ctx.interval, 5.0))
            return False
        summary.update(acked=report.acked, written=report.written, already=report.already,
                       retrying=report.retrying, dead=report.dead, conflicts=report.conflicts,
                       held=report.held, recovered=report.recovered, paused=report.paused)
        if report.recovered:
            log.info("push: %d op(s) left in flight by a stopped process recovered (read "
                     "back before any resend)", report.recovered)
        if report.acked:
            log.info("push: %d op(s) acknowledged (%d written, %d already there)",
                     report.acked, report.written, report.already)
        problem = report.paused or (report.errors[0] if report.errors else None)
        if report.retrying and not ctx.check_online():
            problem = problem or f"{report.retrying} op(s) waiting: the server is unreachable"
        elif report.retrying:
            problem = problem or f"{report.retrying} op(s) will be retried"
        if report.paused:
            ctx.status.error("push", report.paused)
            self.errors.log(logging.ERROR, f"push paused: {report.paused}")
        elif report.dead or report.conflicts:
            msg = (f"{report.dead} dead letter(s), {report.conflicts} conflict(s): see "
                   "`mirror outbox`" + (f" ({report.errors[0]})" if report.errors else ""))
            ctx.status.error("push", msg)
            self.errors.log(logging.WARNING, f"push: {msg}")
        if problem:
            summary["error"] = problem
        return report.ok

    def _upload(self, pks: list[int], summary: dict[str, Any]) -> bool:
        from mirror.outbox.upload_run import upload_run

        ctx = self.ctx
        done = failed = 0
        for pk in pks:
            if not self.should_keep_running():
                break
            try:
                upload_run(ctx.store, ctx.client, pk)
                done += 1
            except MirrorError as exc:
                failed += 1
                ctx.status.error("push", f"upload of local run {pk}: {exc.message}")
                if is_offline_error(exc):
                    ctx.conn.failed(exc)
                    break
                self.errors.log(logging.WARNING, f"upload of local run {pk}: {exc.message}")
        summary.update(uploads=done, upload_failures=failed)
        if done:
            log.info("push: uploaded %d local run(s)", done)
        return failed == 0

"""The upload drop folder: files put in ``uploads/<entity>/<project>/<run_id>/...`` are
uploaded to that run, under their path relative to the run's folder.

A file is taken only once it is *complete*, which the file system cannot tell us: there is
no "closed for good" event on every platform, and events can be lost (5.3). So the rule is
the one every robust drop-folder tool uses: the file's size and mtime are the same in two
scans at least ``settle`` seconds apart, and its name is not one that copy tools and
browsers use for partial files (``.part``, ``.crdownload``, ``~``, dot-files...). A
writer that pauses longer than ``settle`` mid-file defeats any such rule; the copy below
re-checks the size and mtime after reading, so a file that changed while it was copied
is left for a later scan instead of being uploaded half-written.

Taking a file (crash-safe at every step, so a SIGKILL anywhere is harmless):

1. copy it into the blob cache (verified, fsynced, renamed: :func:`mirror.store.blobs.put_stream`);
2. in one transaction: unless the run's current view already has exactly these bytes
   under that name, queue a ``file_put`` op (:func:`mirror.outbox.edits.enqueue_file_put`,
   which records the blob row in the same transaction);
3. delete the original.

A crash after 1 leaves an orphan blob (harmless) and the file, taken again next time; a
crash after 2 leaves the file, and the next scan finds the view already holds those bytes,
so it only deletes the file: never two uploads. A file for a run the store does not know
stays where it is and is reported until the run appears (e.g. after the next pull).
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mirror.errors import BlobVerifyError, UnsafePathError
from mirror.outbox import edits, overlay
from mirror.paths import validate_path_part, validate_run_file_name
from mirror.store import Store, blobs
from mirror.store import runs as store_runs

__all__ = ["DropFolder", "DropOutcome", "is_partial_name"]

log = logging.getLogger("mirror.watch")

PARTIAL_SUFFIXES = (
    ".part", ".partial", ".tmp", ".temp", ".crdownload", ".download", ".opdownload",
    ".filepart", ".swp", ".swx", "~",
)
"""Names copy tools, browsers and editors give files they have not finished writing."""


def is_partial_name(name: str) -> bool:
    """True for hidden files and the partial/temp names of common tools (never taken)."""
    lower = name.lower()
    return lower.startswith((".", "~$")) or lower.endswith(PARTIAL_SUFFIXES)


@dataclass
class DropOutcome:
    """What a scan did with one file. ``status``: queued | already | unknown_run |
    rejected | changed (it changed while being copied; retried later)."""

    path: str  # relative to the drop folder, with "/"
    status: str
    run: str | None = None  # entity/project/run_id
    name: str | None = None  # the run file name
    reason: str | None = None


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: float  # monotonic time this (size, mtime) was first seen
    reported: str | None = None  # the status already reported for this signature


@dataclass
class DropFolder:
    """The drop folder of one store. Call :meth:`scan` from one thread (a timer and hints).

    ``settle``: seconds a file's size and mtime must stay unchanged before it is taken.
    ``on_queued`` is called after each queued upload (the daemon wakes its pusher).
    """

    store: Store
    root: Path
    settle: float = 2.0
    clock: Callable[[], float] = time.monotonic
    on_queued: Callable[[], None] | None = None
    ingested: int = 0
    _seen: dict[Path, _Seen] = field(default_factory=dict)
    _unknown: dict[str, str] = field(default_factory=dict)  # rel path -> run
    _rejected: dict[str, str] = field(default_factory=dict)  # rel path -> reason

    # --- what the status shows -----------------------------------------------------------

    @property
    def unknown(self) -> list[str]:
        """Files waiting because their run is not in the store (relative paths)."""
        return sorted(self._unknown)

    @property
    def rejected(self) -> list[dict[str, str]]:
        return [{"path": p, "reason": r} for p, r in sorted(self._rejected.items())]

    def next_ready_in(self) -> float | None:
        """Seconds until a file seen changing may be stable (None: nothing is settling)."""
        now = self.clock()
        waits = [s.since + self.settle - now for s in self._seen.values() if s.reported is None]
        return max(0.0, min(waits)) if waits else None

    # --- the scan ----------------------------------------------------------------------------

    def scan(self) -> list[DropOutcome]:
        """Look at every file once; take the complete ones. Never raises for one file."""
        now = self.clock()
        outcomes: list[DropOutcome] = []
        present: set[Path] = set()
        for path, parts in self._walk():
            present.add(path)
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            rel = "/".join(parts)
            if not stat.S_ISREG(st.st_mode):
                self._report(outcomes, path, self._seen.get(path) or _Seen(-1, -1, now),
                             DropOutcome(rel, "rejected", reason="not a regular file "
                                         "(symlinks are not followed)"))
                continue
            sig = (st.st_size, st.st_mtime_ns)
            seen = self._seen.get(path)
            if seen is None or (seen.size, seen.mtime_ns) != sig:
                self._seen[path] = _Seen(st.st_size, st.st_mtime_ns, now)
                self._unknown.pop(rel, None)
                continue
            if now - seen.since < self.settle or seen.reported == "rejected":
                continue
            outcome = self._take(path, parts, seen)
            if outcome.status in ("queued", "already"):
                self._seen.pop(path, None)
                self._unknown.pop(rel, None)
                self._rejected.pop(rel, None)
                outcomes.append(outcome)
            elif outcome.status == "changed":
                self._seen.pop(path, None)
                outcomes.append(outcome)
            else:
                self._report(outcomes, path, seen, outcome)
        for gone in set(self._seen) - present:
            del self._seen[gone]
        live = {"/".join(p.relative_to(self.root).parts) for p in present}
        for book in (self._unknown, self._rejected):
            for rel in [r for r in book if r not in live]:
                del book[rel]
        return outcomes

    def _report(self, outcomes: list[DropOutcome], path: Path, seen: _Seen,
                outcome: DropOutcome) -> None:
        """Unknown-run and refused files: reported once per version of the file."""
        self._seen[path] = seen
        if outcome.status == "unknown_run":
            self._unknown[outcome.path] = outcome.run or ""
        else:
            self._rejected[outcome.path] = outcome.reason or outcome.status
        if seen.reported != outcome.status:
            seen.reported = outcome.status
            log.warning("drop folder: %s: %s", outcome.path, outcome.reason)
            outcomes.append(outcome)

    def _walk(self) -> Iterator[tuple[Path, tuple[str, ...]]]:
        if not self.root.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not is_partial_name(d))
            base = Path(dirpath)
            for name in sorted(filenames):
                if is_partial_name(name):
                    continue
                path = base / name
                yield path, path.relative_to(self.root).parts

    # --- taking one file -------------------------------------------------------------------

    def _take(self, path: Path, parts: tuple[str, ...], seen: _Seen) -> DropOutcome:
        rel = "/".join(parts)
        if len(parts) < 4:
            return DropOutcome(rel, "rejected", reason="put files in "
                               "<entity>/<project>/<run_id>/ inside the drop folder")
        entity, project, run_id = parts[:3]
        name = "/".join(parts[3:])
        run = f"{entity}/{project}/{run_id}"
        try:
            for part, what in ((entity, "entity"), (project, "project"), (run_id, "run id")):
                validate_path_part(part, what)
            validate_run_file_name(name)
        except UnsafePathError as exc:
            return DropOutcome(rel, "rejected", run=run, name=name, reason=exc.message)
        with self.store.session() as s:
            run_pk = store_runs.run_pk(s, entity, project, run_id)
        if run_pk is None:
            return DropOutcome(rel, "unknown_run", run=run, name=name,
                               reason=f"no run {run} in the store (sync its project, or "
                               "check the folder names); the file stays")
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                if (st.st_size, st.st_mtime_ns) != (seen.size, seen.mtime_ns):
                    return DropOutcome(rel, "changed", run=run, name=name)
                info = blobs.put_stream(self.store, fh, expected_size=st.st_size,
                                        record=False)
            after = path.stat()
        except FileNotFoundError:
            return DropOutcome(rel, "changed", run=run, name=name, reason="it disappeared")
        except BlobVerifyError:
            return DropOutcome(rel, "changed", run=run, name=name)
        except PermissionError as exc:
            return DropOutcome(rel, "rejected", run=run, name=name,
                               reason=f"cannot read it: {exc.strerror}")
        if (after.st_size, after.st_mtime_ns) != (seen.size, seen.mtime_ns):
            return DropOutcome(rel, "changed", run=run, name=name)
        with self.store.transaction() as s:
            view = overlay.view_file(s, run_pk, name)
            if view is not None and view.md5 == info.md5_b64:
                status = "already"  # taken before a crash, or the same bytes dropped again
            else:
                edits.enqueue_file_put(s, run_pk, name, info)
                status = "queued"
        self._remove(path, self.root.joinpath(*parts[:3]))
        if status == "queued":
            self.ingested += 1
            log.info("drop folder: queued %s (%d bytes) for %s as %s", rel, info.size, run,
                     name)
            if self.on_queued is not None:
                self.on_queued()
        return DropOutcome(rel, status, run=run, name=name)

    @staticmethod
    def _remove(path: Path, run_dir: Path) -> None:
        """Delete the taken file and the empty folders it leaves below the run's folder."""
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:  # e.g. Windows: still open elsewhere; the next scan retries
            log.warning("drop folder: cannot remove %s yet: %s", path, exc)
            return
        parent = path.parent
        while parent != run_dir and run_dir in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

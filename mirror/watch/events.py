"""watchdog observers as *hints*: a file event only says "look at this path again soon".

Events are not facts (offline-sync-anchors 5.3): inotify drops events when its queue
overflows, bulk copies coalesce creates, and event types differ by platform. So nothing
here decides anything; each watch calls back with the path that changed, and the owner of
the watch runs its reconcile scan (debounced), exactly as its timer would. If the OS
refuses a watch (inotify limits, a folder that does not exist yet, a network file
system), the watch is reported unavailable and the timer scans carry the whole load.

Read-only accesses (``opened``, ``closed_no_write``) are ignored: the daemon reads the
files it watches (an MLflow database, the store), and its own reads must not wake it.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler

__all__ = ["FsWatcher", "Watch"]

log = logging.getLogger("mirror.watch")

_READ_ONLY = frozenset({"opened", "closed_no_write"})


@dataclass(frozen=True)
class Watch:
    """Call ``callback(path)`` for changes under ``path`` (only ``names``, if given)."""

    path: Path
    callback: Callable[[str], None]
    recursive: bool = False
    names: frozenset[str] | None = None


class _Handler(FileSystemEventHandler):
    """The watchdog event handler of one :class:`Watch`: every event is just a path."""

    def __init__(self, watch: Watch) -> None:
        super().__init__()
        self.watch = watch

    def dispatch(self, event: FileSystemEvent) -> None:
        if event.event_type in _READ_ONLY:
            return
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            if not raw:
                continue
            path = raw.decode() if isinstance(raw, bytes) else str(raw)
            if self.watch.names is not None and Path(path).name not in self.watch.names:
                continue
            try:
                self.watch.callback(path)
            except Exception:  # a hint must never kill the observer thread
                log.exception("file-event callback failed for %s", path)


class FsWatcher:
    """One watchdog observer for all of the daemon's watches. ``start()``/``stop()``."""

    def __init__(self) -> None:
        self._observer: Any = None
        self._lock = threading.Lock()
        self.unavailable: dict[str, str] = {}  # path -> why no events come from it

    def start(self, watches: list[Watch]) -> None:
        """Start observing every watch whose folder exists; the others are reported in
        :attr:`unavailable` (their owners rely on timer scans)."""
        from watchdog.observers import Observer  # picks inotify/FSEvents/kqueue/polling

        # inotify's recursive watch re-adds a new folder's callback when its creation
        # races the scan of its parent, and warns about it: noise in the daemon's log
        # (and fatal to the observer thread where warnings are errors), never a lost event.
        warnings.filterwarnings("ignore", message=r"Callback with id .* already exists",
                                category=RuntimeWarning)

        existing = []
        for w in watches:
            if w.path.is_dir():
                existing.append(w)
            else:
                self.unavailable[str(w.path)] = "the folder does not exist"
                log.warning("no file events for %s (it does not exist); relying on periodic "
                            "scans", w.path)
        if not existing:
            return  # no observer at all: constructing one already starts an inotify thread
        observer = Observer()
        observer.daemon = True
        scheduled = 0
        for w in existing:
            try:
                observer.schedule(_Handler(w), str(w.path), recursive=w.recursive)
                scheduled += 1
            except OSError as exc:  # e.g. the inotify watch limit
                self.unavailable[str(w.path)] = f"{type(exc).__name__}: {exc}"
                log.warning("no file events for %s (%s); relying on periodic scans",
                            w.path, exc)
        try:
            if not scheduled:
                raise OSError("no folder could be watched")
            observer.start()
        except OSError as exc:  # e.g. the inotify instance limit, a folder just removed
            observer.stop()  # ends the emitters that did start, and the observer's fd thread
            if observer.is_alive():
                observer.join(2.0)
            for w in existing:
                self.unavailable.setdefault(str(w.path), f"{type(exc).__name__}: {exc}")
            log.warning("file events unavailable (%s); relying on periodic scans", exc)
            return
        with self._lock:
            self._observer = observer

    def stop(self, timeout: float = 2.0) -> None:
        with self._lock:
            observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout)

    @property
    def alive(self) -> bool:
        with self._lock:
            return self._observer is not None and bool(self._observer.is_alive())

"""The one loop shape of every daemon component: a stoppable thread woken by a trigger.

Borrowed from watchdog's ``BaseThread`` (style guide item 13): a worker never sleeps with
``time.sleep``; it waits on a :class:`Trigger` with a timeout, so ``stop()`` (or a file
event, or the network coming back) wakes it at once. A failing tick is logged at a limited
rate and retried on the next tick; it never kills the thread, because a daemon that dies
quietly on the first unexpected exception is worse than one that keeps saying what is
wrong.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["RateLimitedLog", "StoppableThread", "Trigger"]


class Trigger:
    """A wake-up flag that is never lost: ``fire()`` from anywhere, ``wait()`` in a worker.

    Unlike ``threading.Event`` used with ``wait(); clear()``, a fire that lands between the
    wait returning and the clear is kept, because both happen under one condition lock.
    ``wait_quiet`` implements debouncing (watchdog's ``EventDebouncer``): after a first
    fire, keep collecting until no new fire came for ``quiet`` seconds, or ``max_delay``
    passed since the first, so a steady stream of events cannot postpone the work forever.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending = False
        self._first: float | None = None
        self._last = 0.0

    def fire(self) -> None:
        with self._cond:
            now = time.monotonic()
            self._pending = True
            self._last = now
            if self._first is None:
                self._first = now
            self._cond.notify_all()

    def wait(self, timeout: float | None) -> bool:
        """Block until fired or ``timeout``; returns whether it was fired (and consumes it)."""
        with self._cond:
            if not self._pending:
                self._cond.wait(None if timeout is None else max(0.0, timeout))
            fired = self._pending
            self._pending = False
            self._first = None
            return fired

    def wait_quiet(self, quiet: float, max_delay: float,
                   stopped: Callable[[], bool] = lambda: False) -> None:
        """After a fire: return once ``quiet`` seconds pass without another one (bounded)."""
        with self._cond:
            start = self._first if self._first is not None else time.monotonic()
            while not stopped():
                now = time.monotonic()
                due = min(self._last + quiet, start + max_delay)
                if now >= due:
                    break
                self._cond.wait(due - now)
            self._pending = False
            self._first = None


class RateLimitedLog:
    """Log the same message at most once per ``every`` seconds (litestream's error log).

    An offline laptop would otherwise write one identical line per retry into the log.
    """

    def __init__(self, logger: logging.Logger, every: float = 60.0) -> None:
        self.logger = logger
        self.every = every
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def log(self, level: int, message: str, *, exc_info: bool = False) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(message)
            if last is not None and now - last < self.every:
                return False
            self._last[message] = now
            if len(self._last) > 1000:  # bounded: forget the oldest messages
                for key in sorted(self._last, key=self._last.__getitem__)[:500]:
                    del self._last[key]
        self.logger.log(level, "%s", message, exc_info=exc_info)
        return True


class StoppableThread(threading.Thread):
    """A daemon thread with ``stop()``/``should_keep_running()`` and a :class:`Trigger`.

    Subclasses implement :meth:`tick` (one unit of work) and :meth:`next_delay` (seconds
    until the next tick when nobody fires the trigger). ``run`` is the shared loop; the
    hooks ``on_thread_start``/``on_thread_stop`` run in the thread.
    """

    log = logging.getLogger("mirror.daemon")

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.stopped_event = threading.Event()
        self.trigger = Trigger()
        self.errors = RateLimitedLog(self.log)

    def should_keep_running(self) -> bool:
        return not self.stopped_event.is_set()

    def stop(self) -> None:
        """Ask the thread to end after its current tick; returns at once."""
        self.stopped_event.set()
        self.trigger.fire()

    def poke(self) -> None:
        """Run a tick soon instead of waiting out :meth:`next_delay`."""
        self.trigger.fire()

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` unless stopped first; returns False when stopped."""
        return not self.stopped_event.wait(max(0.0, seconds))

    def next_delay(self) -> float | None:
        return None

    def tick(self, fired: bool) -> None:
        raise NotImplementedError

    def on_thread_start(self) -> None:
        """Hook: runs in the thread before the first tick."""

    def on_thread_stop(self) -> None:
        """Hook: runs in the thread after the last tick, even after an error."""

    def run(self) -> None:
        try:
            self.on_thread_start()
            fired = True  # the first tick runs at once: crash-only restart resumes work
            while self.should_keep_running():
                try:
                    self.tick(fired)
                except Exception as exc:  # keep the daemon alive; say what is wrong
                    self.on_error(exc)
                if not self.should_keep_running():
                    break
                fired = self.trigger.wait(self.next_delay())
        finally:
            self.on_thread_stop()

    def on_error(self, exc: Exception) -> None:
        """An unexpected exception escaped :meth:`tick`: log it (rate-limited)."""
        self.errors.log(logging.ERROR, f"{self.name}: {type(exc).__name__}: {exc}",
                        exc_info=True)

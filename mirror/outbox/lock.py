"""One pusher per store: an OS file lock next to the database.

Why a file lock and not a row: the kernel releases it when the process dies, however it
dies (SIGKILL included), so a crashed push never blocks the next one, and while a push
holds it every op still ``in_flight`` must belong to a process that died (which is what
lets :func:`mirror.store.outbox.recover_in_flight` reset them safely).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from mirror.errors import MirrorError
from mirror.store import Store

__all__ = ["PushBusyError", "push_lock"]

_MEMORY_LOCKS: dict[str, threading.Lock] = {}
_MEMORY_GUARD = threading.Lock()


class PushBusyError(MirrorError):
    """Another `mirror push` is replaying this store's outbox right now."""

    transient = True
    default_hint = "Wait for the other push to finish (it holds the outbox lock), then retry."


@contextmanager
def push_lock(store: Store) -> Iterator[None]:
    """Hold the store's push lock for the block, or raise :class:`PushBusyError` at once."""
    if store.path is None:  # in-memory or non-SQLite: one process, a threading lock
        with _MEMORY_GUARD:
            lock = _MEMORY_LOCKS.setdefault(store.url, threading.Lock())
        if not lock.acquire(blocking=False):
            raise PushBusyError(f"a push of {store.where} is already running")
        try:
            yield
        finally:
            lock.release()
        return
    path = store.path.with_name(store.path.name + ".push-lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _lock(fd, path.name)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _lock(fd: int, name: str) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        try:
            getattr(msvcrt, "locking")(fd, getattr(msvcrt, "LK_NBLCK"), 1)  # noqa: B009
        except OSError:
            raise PushBusyError(f"another push holds {name}") from None
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise PushBusyError(f"another push holds {name}") from None

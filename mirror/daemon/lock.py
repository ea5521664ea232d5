"""One daemon per store: an OS file lock next to the database, with the holder's pid.

Why an OS lock and not a pid file alone: the kernel releases the lock when the process
dies, however it dies (SIGKILL, power loss, OOM killer), so a crashed daemon never blocks
the next start and nobody has to guess whether a pid in a file is still ours (pids are
reused). The pid is written *inside* the locked file only to name the holder in the
message of a refused second start (CouchDB's ``t_dont_start_duplicate_job``).

The same lock answers "is a daemon running?" for ``mirror status`` without any guessing:
try to take it shared without blocking; if that fails, someone holds it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mirror.errors import MirrorError
from mirror.settings import Settings

__all__ = [
    "DaemonLock",
    "DaemonRunningError",
    "holder_pid",
    "lock_path",
    "network_filesystem",
    "state_base",
]

_PID_OFFSET = 1  # Windows locks byte 0; the pid text starts after it


class DaemonRunningError(MirrorError):
    """Another ``mirror daemon`` already serves this store."""

    def __init__(self, pid: int | None, store: str, path: Path) -> None:
        who = f"pid {pid}" if pid else "a process whose pid could not be read"
        super().__init__(
            f"a mirror daemon is already running for {store} ({who}; lock {path})",
            hint=(f"Stop it first (kill {pid}), or use `mirror status` to see what it does."
                  if pid else "Stop the other daemon first, or use `mirror status`."),
        )
        self.pid = pid
        self.lock_path = path


def state_base(settings: Settings) -> Path:
    """Where the daemon's per-store files live: next to the SQLite file, named after it.

    ``<db>.daemon.lock`` and ``<db>.daemon.json``; for a non-SQLite URL, under the home.
    """
    db = settings.db_path
    return db if db is not None else settings.home / "mirror"


def lock_path(settings: Settings) -> Path:
    base = state_base(settings)
    return base.with_name(base.name + ".daemon.lock")


class DaemonLock:
    """The exclusive lock of one store's daemon. ``acquire()`` or raise; ``release()``."""

    def __init__(self, path: Path, store: str = "") -> None:
        self.path = path
        self.store = store or str(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock and write our pid into it, or raise :class:`DaemonRunningError`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _try_lock(fd, exclusive=True):
                raise DaemonRunningError(_read_pid(fd), self.store, self.path)
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (" " * _PID_OFFSET + f"{os.getpid()}\n").encode("ascii"))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (closing the descriptor releases it). Idempotent.

        The file stays: deleting it would let a racing starter lock a file that is
        about to vanish while a third one creates a new one, and both would run.
        """
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            os.close(fd)

    def __enter__(self) -> DaemonLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder_pid(path: Path) -> int | None:
    """The pid of the live process holding the lock at ``path`` (None: nobody holds it).

    Returns 0 when the lock is held but the pid cannot be read (a starter between taking
    the lock and writing its pid).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if _try_lock(fd, exclusive=False):
            _unlock(fd)
            return None
        return _read_pid(fd) or 0
    finally:
        os.close(fd)


_NETWORK_FS = ("nfs", "nfs4", "cifs", "smb", "smbfs", "smb3", "9p", "afs", "ceph",
               "glusterfs", "lustre", "fuse.sshfs", "fuse.rclone", "davfs", "fuse.s3fs")


def network_filesystem(path: Path, mounts: Path = Path("/proc/mounts")) -> str | None:
    """The file-system type of ``path`` if it is a network one (Linux; None otherwise).

    SQLite's WAL and these OS locks need every process on one host; on NFS/SMB both can
    silently fail (offline-sync-anchors 5.1), so the daemon warns loudly at start.
    """
    try:
        lines = mounts.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    target = str(path.resolve())
    best, best_type = "", None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, best_type = mount, parts[2]
    return best_type if best_type and best_type.startswith(_NETWORK_FS) else None


def _read_pid(fd: int) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 64).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def _try_lock(fd: int, *, exclusive: bool) -> bool:
    if sys.platform == "win32":  # pragma: no cover - lock the first byte
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import fcntl

    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _unlock(fd: int) -> None:
    if sys.platform == "win32":  # pragma: no cover
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)

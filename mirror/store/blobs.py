"""The content-addressed blob cache next to the database (``blobs/ab/abcdef...``).

Run files are stored once per distinct content, named by the sha256 of their bytes, so
re-downloading or re-uploading the same file is a no-op and two runs sharing a file share
its bytes. The write protocol is the one DESIGN.md prescribes, because a crash anywhere
must never leave a row that points at a missing or partial file:

1. stream the bytes into a temp file inside ``blobs/`` (same file system, so the final
   rename is atomic), hashing sha256 and md5 on the way;
2. verify size and md5 against what the sender promised (W&B's ``md5`` is base64 of the
   raw digest); on mismatch delete the temp file and raise :class:`BlobVerifyError`;
3. fsync the file, rename it into place, fsync the folder;
4. only then upsert the ``blob`` row, in the caller's transaction or in our own.

Orphan files (a blob written, then the transaction rolled back) are harmless: the next put
of the same bytes finds them, and a later garbage collection can delete unreferenced ones.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, Protocol

from sqlalchemy import text
from sqlmodel import Session

from mirror.errors import BlobVerifyError, StoreError
from mirror.store import bulk
from mirror.store.engine import translated
from mirror.store.store import Store

CHUNK = 1024 * 1024
_HASH = re.compile(r"^[0-9a-f]{64}$")
_TMP_PREFIX = ".incoming-"
_UPSERT_BLOB = text(
    "INSERT INTO blob (hash, size, md5, created_at) VALUES (:hash, :size, :md5, :created_at) "
    "ON CONFLICT (hash) DO NOTHING"
)


class Readable(Protocol):
    """Anything with ``read(n) -> bytes``: a file, a socket's reader, a wrapper."""

    def read(self, size: int, /) -> bytes: ...


@dataclass(frozen=True)
class BlobInfo:
    """A stored blob: sha256 ``hash`` (hex), ``size`` in bytes, ``md5_b64`` as W&B reports it."""

    hash: str
    size: int
    md5_b64: str


def md5_b64(data: bytes) -> str:
    """Base64 of the raw md5 digest of ``data`` (W&B's ``File.md5``)."""
    return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")


def blob_path(store: Store, blob_hash: str) -> Path:
    """Where the blob ``blob_hash`` lives; refuses anything but 64 lowercase hex digits."""
    if not isinstance(blob_hash, str) or not _HASH.match(blob_hash):
        raise StoreError(f"not a blob hash: {blob_hash!r}", hint="Blob hashes are sha256 hex.")
    return store.blobs_dir / blob_hash[:2] / blob_hash


def has_blob(store: Store, blob_hash: str) -> bool:
    """True if the blob's file is in the cache (the row alone is not enough)."""
    return blob_path(store, blob_hash).is_file()


def open_blob(store: Store, blob_hash: str) -> BinaryIO:
    """Open a cached blob for reading; raises ``FileNotFoundError`` if it is not cached."""
    return open(blob_path(store, blob_hash), "rb")


def read_blob(store: Store, blob_hash: str) -> bytes:
    """The whole content of a cached blob."""
    with open_blob(store, blob_hash) as fh:
        return fh.read()


def get_blob(session: Session, blob_hash: str) -> BlobInfo | None:
    """The ``blob`` row of ``blob_hash``, if recorded."""
    row = session.execute(
        text("SELECT hash, size, md5 FROM blob WHERE hash = :h"), {"h": blob_hash}
    ).first()
    return None if row is None else BlobInfo(hash=row[0], size=int(row[1]), md5_b64=row[2])


def record_blob(session: Session, info: BlobInfo, *, now: float | None = None) -> None:
    """Upsert the ``blob`` row of a blob whose file is already in place (idempotent)."""
    session.execute(
        _UPSERT_BLOB,
        {
            "hash": info.hash,
            "size": info.size,
            "md5": info.md5_b64,
            "created_at": time.time() if now is None else now,
        },
    )


def record_blobs(session: Session, infos: list[BlobInfo], *, now: float | None = None) -> None:
    """:func:`record_blob` for many blobs in one statement (a synced batch of files)."""
    if infos:
        stamp = time.time() if now is None else now
        bulk.insert_rows(
            session.connection(), "blob", ("hash", "size", "md5", "created_at"),
            [{"hash": i.hash, "size": i.size, "md5": i.md5_b64, "created_at": stamp}
             for i in infos],
            on_conflict="ON CONFLICT (hash) DO NOTHING",
        )


def put_bytes(
    store: Store, data: bytes, *, session: Session | None = None, record: bool = True,
    now: float | None = None, durable: bool = True,
) -> BlobInfo:
    """Store ``data`` (see :func:`put_stream`); a no-op if the same bytes are cached.

    ``durable=False`` skips the fsyncs, for data that can be regenerated at will (the
    seeder); the rename still makes the file appear whole or not at all.
    """
    blob_hash = hashlib.sha256(data).hexdigest()
    info = BlobInfo(hash=blob_hash, size=len(data), md5_b64=md5_b64(data))
    final = blob_path(store, blob_hash)
    if not _is_complete(final, info.size):
        tmp = _new_temp(store)
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                if durable:
                    os.fsync(fh.fileno())
            _install(tmp, final, durable=durable)
        except BaseException:
            _unlink(tmp)
            raise
    if record:
        _record(store, info, session, now)
    return info


def put_stream(
    store: Store,
    fileobj: Readable,
    expected_size: int | None = None,
    expected_md5_b64: str | None = None,
    *,
    session: Session | None = None,
    record: bool = True,
    now: float | None = None,
) -> BlobInfo:
    """Copy ``fileobj`` into the cache, verified, and return its :class:`BlobInfo`.

    ``expected_size``/``expected_md5_b64`` are what the sender promised; a mismatch raises
    :class:`BlobVerifyError` and leaves nothing behind. Reading stops after
    ``expected_size`` bytes plus one (enough to detect a longer stream), so a caller can
    hand in a socket without a length limit of its own. The ``blob`` row is written in
    ``session`` if given, else in a transaction of its own, unless ``record`` is false
    (then the caller records it with :func:`record_blob`, e.g. together with the row that
    references the blob).
    """
    sha = hashlib.sha256()
    md5 = hashlib.md5()
    size = 0
    tmp = _new_temp(store)
    try:
        with open(tmp, "wb") as fh:
            while True:
                want = CHUNK
                if expected_size is not None:
                    want = min(CHUNK, expected_size + 1 - size)
                    if want <= 0:
                        break
                chunk = fileobj.read(want)
                if not chunk:
                    break
                sha.update(chunk)
                md5.update(chunk)
                fh.write(chunk)
                size += len(chunk)
            fh.flush()
            got_md5 = base64.b64encode(md5.digest()).decode("ascii")
            if expected_size is not None and size != expected_size:
                raise BlobVerifyError(
                    f"size mismatch: expected {expected_size} bytes, received "
                    f"{'more' if size > expected_size else size}"
                )
            if expected_md5_b64 is not None and got_md5 != expected_md5_b64:
                raise BlobVerifyError(
                    f"md5 mismatch: expected {expected_md5_b64}, received {got_md5}"
                )
            os.fsync(fh.fileno())
        info = BlobInfo(hash=sha.hexdigest(), size=size, md5_b64=got_md5)
        final = blob_path(store, info.hash)
        if _is_complete(final, size):
            _unlink(tmp)
        else:
            _install(tmp, final)
    except BaseException:
        _unlink(tmp)
        raise
    if record:
        _record(store, info, session, now)
    return info


def _record(store: Store, info: BlobInfo, session: Session | None, now: float | None) -> None:
    if session is not None:
        with translated(store.where):
            record_blob(session, info, now=now)
        return
    with store.transaction() as s:
        record_blob(s, info, now=now)


def _new_temp(store: Store) -> Path:
    """A new empty temp file inside ``blobs/`` (same file system as the final place)."""
    root = store.blobs_dir
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".tmp", dir=root)
    except OSError as exc:
        raise StoreError(
            f"cannot write to the blob cache {root}: {exc.strerror}", path=str(root),
            hint="Check free disk space and permissions of the store's folder.",
        ) from exc
    os.close(fd)
    return Path(name)


def _install(tmp: Path, final: Path, *, durable: bool = True) -> None:
    """Rename the verified temp file into place and make the rename durable."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
    except OSError as exc:
        raise StoreError(
            f"cannot write to the blob cache {final.parent}: {exc.strerror}",
            path=str(final), hint="Check free disk space and permissions of the store's folder.",
        ) from exc
    if durable:
        _fsync_dir(final.parent)


def _is_complete(path: Path, size: int) -> bool:
    """A blob file that exists with the right size was installed whole (rename is atomic)."""
    try:
        return path.stat().st_size == size
    except OSError:
        return False


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":  # pragma: no cover - directories cannot be fsynced on Windows
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse it; the data is synced
        pass
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


__all__ = [
    "BlobInfo",

    "Readable",
    "blob_path",
    "get_blob",
    "has_blob",
    "md5_b64",
    "open_blob",
    "put_bytes",
    "put_download",
    "put_stream",
    "read_blob",
    "record_blob",
    "record_blobs",
]


class _HashingSink:
    """A seekable file wrapper that hashes (sha256, md5) what is written through it.

    Downloads restart from the beginning on a retry (seek back, truncate): the hashes
    restart with them, so one pass over the network both writes and identifies the blob.
    """

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self._reset()

    def _reset(self) -> None:
        self.sha = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.md5.update(data)
        self.size += len(data)
        return self._fh.write(data)

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._fh.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        if (offset, whence) != (0, 0):
            raise OSError("a download sink can only be rewound to its start")
        self._reset()
        return self._fh.seek(0)

    def truncate(self, size: int | None = None) -> int:
        return self._fh.truncate(size)

    def flush(self) -> None:
        self._fh.flush()


def put_download(
    store: Store,
    fetch: Callable[[IO[bytes]], object],
    expected_size: int | None = None,
    expected_md5_b64: str | None = None,
) -> BlobInfo:
    """Let ``fetch`` write a download into the cache; verify, fsync, rename; don't record.

    ``fetch(sink)`` writes the bytes (it may rewind the sink to its start and write again,
    as a retrying download does). The result is checked against the promised size and md5
    (W&B's base64 digest), fsynced and renamed into place. The ``blob`` row is NOT written:
    the caller records it (:func:`record_blob`) in the same transaction as the row that
    references the blob, so no row ever points at an unverified file.
    """
    tmp = _new_temp(store)
    try:
        with open(tmp, "w+b") as fh:
            sink = _HashingSink(fh)
            fetch(sink)  # type: ignore[arg-type]  # duck-typed writable, seekable file
            fh.flush()
            got_md5 = base64.b64encode(sink.md5.digest()).decode("ascii")
            if expected_size is not None and sink.size != expected_size:
                raise BlobVerifyError(
                    f"size mismatch: expected {expected_size} bytes, received {sink.size}"
                )
            if expected_md5_b64 is not None and got_md5 != expected_md5_b64:
                raise BlobVerifyError(
                    f"md5 mismatch: expected {expected_md5_b64}, received {got_md5}"
                )
            os.fsync(fh.fileno())
        info = BlobInfo(hash=sink.sha.hexdigest(), size=sink.size, md5_b64=got_md5)
        final = blob_path(store, info.hash)
        if _is_complete(final, info.size):
            _unlink(tmp)
        else:
            _install(tmp, final)
    except BaseException:
        _unlink(tmp)
        raise
    return info

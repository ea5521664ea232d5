"""``run.files()`` / ``run.file(name)`` and ``File.download()`` from the blob cache.

File names come from the network, so a download validates the name
(:func:`~mirror.paths.validate_run_file_name`: no absolute paths, no ``..``, no
backslashes or control characters) and then checks that the resolved target is inside
``root`` even through symlinked folders; the bytes land in a temp file next to the target
and are renamed into place, so an interrupted download never leaves a partial file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from mirror.api.errors import (
    DownloadTargetExistsError,
    FileNotCachedError,
    RunFileNotFoundError,
)
from mirror.api.paging import Paginator
from mirror.errors import UnsafePathError
from mirror.outbox import edits, overlay
from mirror.paths import validate_run_file_name
from mirror.records import FileRecord
from mirror.store import blobs, reads

if TYPE_CHECKING:
    from mirror.api.run import Run


class Files(Paginator["File"]):
    """The files of a run, by name, loaded a page at a time (keyset pages).

    ``names`` are exact names; ``pattern`` is a SQL ``LIKE`` pattern (``%`` any run of
    characters, ``_`` one, ``\\`` escapes), as W&B documents it (MySQL's LIKE).
    """

    def __init__(
        self,
        run: Run,
        names: list[str] | None = None,
        per_page: int = 50,
        pattern: str | None = None,
    ) -> None:
        if names and pattern:
            raise ValueError(
                "Querying for files by both names and pattern is not supported."
                " Please provide either a list of names or a pattern to match.",
            )
        super().__init__(per_page)
        self.run = run
        self.names = list(names or [])
        self.pattern = pattern
        self._count: int | None = None

    def _load_next_page(self) -> list[File]:
        pk = self.run._record.pk
        assert pk is not None
        after = self.objects[-1].name if self.objects else None
        with self.run._api._session() as s:
            pending = overlay.file_ops(s, pk)
            if pending:
                # Pending uploads/deletes: the (small) listing is built whole, then paged
                # by name exactly as the stored one is (keyset, stable under deletes).
                rest = [f for f in self._overlaid(s, pk, pending)
                        if after is None or f.name > after]
                page = rest[: self.per_page]
            else:
                page = reads.file_page(
                    s, pk, names=self.names, pattern=self.pattern, after_name=after,
                    limit=self.per_page,
                )
        return [File(rec, self.run) for rec in page]

    def _overlaid(self, session: Any, pk: int, pending: list[Any]) -> list[FileRecord]:
        """The matching files with pending file edits laid over them, by name."""
        return overlay.file_listing(session, pk, pending, names=self.names,
                                    pattern=self.pattern)

    def _length(self) -> int:
        if self._count is None:
            pk = self.run._record.pk
            assert pk is not None
            with self.run._api._session() as s:
                pending = overlay.file_ops(s, pk)
                if pending:
                    self._count = len(self._overlaid(s, pk, pending))
                else:
                    self._count = reads.count_files(s, pk, self.names, self.pattern)
        return self._count

    def one(self, name: str) -> File:
        """The file ``name`` (this listing was made for it), or a not-found error."""
        self._load_until(0)
        if not self.objects:
            raise RunFileNotFoundError(
                f"Could not find file {name!r} in run {'/'.join(self.run.path)}"
            )
        return self.objects[0]

    def __repr__(self) -> str:
        return f"<Files {'/'.join(self.run.path)} ({len(self)})>"


class File:
    """A run file as the server listed it; its bytes come from the local blob cache."""

    def __init__(self, record: FileRecord, run: Run) -> None:
        self._record = record
        self.run = run

    @property
    def id(self) -> str | None:
        """W&B's ``File.id`` (what deleting a file upstream takes)."""
        return self._record.upstream_id

    @property
    def name(self) -> str:
        """The run-relative path (``media/images/x.png``)."""
        return self._record.name

    @property
    def size(self) -> int:
        """Size in bytes (0 when the server did not say, as in wandb)."""
        return int(self._record.size_bytes or 0)

    @property
    def md5(self) -> str | None:
        """Base64 of the raw MD5 digest, W&B's spelling."""
        return self._record.md5

    @property
    def mimetype(self) -> str | None:
        return self._record.mimetype

    @property
    def updated_at(self) -> str | None:
        return self._record.updated_at

    @property
    def url(self) -> str | None:
        return self._record.url

    @property
    def direct_url(self) -> str | None:
        return self._record.direct_url

    @property
    def is_cached(self) -> bool:
        """Are the file's bytes in the local blob cache (can it be downloaded offline)?"""
        blob = self._record.blob_hash
        return bool(blob) and blobs.has_blob(self.run._api.store, str(blob))

    def _open_cached(self) -> BinaryIO:
        """The cached bytes, or :class:`FileNotCachedError` naming the file."""
        blob = self._record.blob_hash
        if blob:
            try:
                return blobs.open_blob(self.run._api.store, blob)
            except FileNotFoundError:
                pass
        raise FileNotCachedError(self.name, "/".join(self.run.path))

    def download(
        self,
        root: str = ".",
        replace: bool = False,
        exist_ok: bool = False,
        api: Any = None,
    ) -> IO[str]:
        """Write the file to ``root/name`` and return it opened for reading (text).

        Args:
            root: the folder to write into (created if needed).
            replace: overwrite a local file of the same name.
            exist_ok: return the existing local file instead of failing.
            api: accepted for compatibility.

        Raises:
            DownloadTargetExistsError: the file exists and neither flag is set (wandb's
                ``ValueError`` message).
            FileNotCachedError: the bytes are not in the cache (sync with ``--files``).
            UnsafePathError: the name would land outside ``root``.
        """
        target = safe_target(root, self.name)
        if target.exists() and not replace:
            if exist_ok:
                return open(target, encoding="utf-8")
            raise DownloadTargetExistsError(
                "File already exists, pass replace=True to overwrite "
                "or exist_ok=True to leave it as is and don't error."
            )
        with self._open_cached() as src:
            _check_inside(root, target)  # before mkdir: it must not follow a link outside
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".mirror-", suffix=".part", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(src, out)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return open(target, encoding="utf-8")

    def delete(self) -> None:
        """Delete the file from the run: gone from every listing at once, queued for push.

        The cached bytes stay in the blob cache (other runs may share them).
        """
        pk = self.run._record.pk
        assert pk is not None
        with self.run._api.store.transaction() as s:
            edits.enqueue_file_delete(s, pk, self.name, base_md5=self.md5)

    def __repr__(self) -> str:
        return f"<File {self.name} ({self.mimetype}) {self.size} bytes>"


def safe_target(root: str | os.PathLike[str], name: str) -> Path:
    """``root/name`` after checking that ``name`` is a safe run-relative path."""
    validate_run_file_name(name)
    return Path(root) / Path(*name.split("/"))


def _check_inside(root: str | os.PathLike[str], target: Path) -> None:
    """Refuse a target whose folder resolves outside ``root`` (through a symlinked folder).

    Checks the deepest folder on the way that exists, so nothing is created through a
    link before the check.
    """
    Path(root).mkdir(parents=True, exist_ok=True)
    real_root = os.path.realpath(root)
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    real = os.path.realpath(folder)
    if os.path.commonpath([real_root, real]) != real_root:
        raise UnsafePathError(str(target), f"it resolves outside {os.fspath(root)!r}")


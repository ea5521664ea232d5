"""Typed errors of wandb-mirror.

Every failure the user can meet is one of these. Each says what failed, why, and what to
do about it (``hint``), and is marked *transient* (worth retrying later: the network, a
busy database, a rate limit) or *terminal* (retrying changes nothing: move it aside as a
dead letter and carry on). Library exceptions (requests, sqlalchemy, mlflow) are
translated into these where they enter, with ``raise ... from exc``; nothing above the
boundaries parses library messages.

::

    MirrorError                      (root; .transient, .hint)
    ├── ConfigError                  bad settings or credentials      terminal
    ├── StoreError                   the local database               terminal
    │   ├── NotAStoreError           empty/foreign/corrupt file       terminal
    │   ├── SchemaTooNewError        written by a newer wandb-mirror  terminal
    │   ├── SchemaOutOfDateError     behind head, upgrade refused      terminal
    │   ├── StoreBusyError           locked by another writer         transient
    │   ├── BlobVerifyError          size/md5 differ from the promise  transient
    │   └── StoreFullError           disk full / read-only            terminal
    ├── UpstreamError                the W&B server
    │   ├── CommError                wandb-compatible name, has .exc  transient
    │   │   ├── UpstreamUnavailable  connection, timeout, 408/429/5xx transient
    │   │   └── RateLimited          429 with Retry-After              transient
    │   ├── AuthError                401: bad or missing API key       terminal
    │   ├── NotFoundError            the run/project does not exist    terminal
    │   ├── EditRejected             4xx on a write                    terminal
    │   └── ProtocolError            malformed server response         terminal
    ├── FilterError                  an invalid runs filter / order    terminal
    ├── UnsafePathError              a hostile file name               terminal
    └── ImportError_                 an importer failed on one run     terminal

The API key never appears in any message: messages are built from explicit fields, never
from request objects or URLs that could carry credentials.
"""

from __future__ import annotations

from typing import Any


class MirrorError(Exception):
    """Root of every error raised by wandb-mirror.

    ``transient`` says whether retrying the same action later can succeed; ``hint`` is one
    sentence telling the user what to do.
    """

    transient: bool = False
    default_hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message

    @property
    def terminal(self) -> bool:
        return not self.transient


class ConfigError(MirrorError):
    """Settings or credentials are missing or invalid."""

    default_hint = "Check MIRROR_HOME, MIRROR_DB_URL and the WANDB_* variables."


# --- store -------------------------------------------------------------------------------


class StoreError(MirrorError):
    """The local store failed."""

    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.path = path


class NotAStoreError(StoreError):
    """The file exists but is not a wandb-mirror store (empty, foreign or corrupt)."""

    default_hint = (
        "Point MIRROR_HOME or --store at a wandb-mirror database, or at a path that does "
        "not exist yet to create a new store. The file was not modified."
    )


class SchemaTooNewError(StoreError):
    """The store was written by a newer wandb-mirror than this one."""

    default_hint = (
        "Upgrade wandb-mirror (pip install -U wandb-mirror) to open this store. "
        "The file was not modified."
    )


class SchemaOutOfDateError(StoreError):
    """The store is behind the code and automatic upgrade was not allowed."""

    default_hint = "Back up the file, then run `mirror db upgrade`."


class StoreBusyError(StoreError):
    """Another process holds the write lock longer than the busy timeout."""

    transient = True
    default_hint = "Another mirror process is writing; retry in a moment."


class BlobVerifyError(StoreError):
    """Received bytes differ from what was promised (size/md5); nothing was kept."""

    transient = True
    default_hint = "The transfer was corrupted or cut short; retry the download or upload."


class StoreFullError(StoreError):
    """The disk is full or the database cannot be written."""

    default_hint = "Free disk space (or fix permissions) and retry; nothing was lost."


# --- upstream ----------------------------------------------------------------------------


class UpstreamError(MirrorError):
    """A request to the W&B (or W&B-compatible) server failed."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        operation: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.operation = operation


class CommError(UpstreamError):
    """Communication with the server failed (the name ``wandb.CommError`` has).

    ``exc`` holds the underlying exception, as in wandb, for scripts that inspect it.
    ``maybe_applied`` is True when the request was sent and its outcome is unknown
    (connection dropped before the answer, read timeout, 5xx): read back before
    re-sending a write. ``retry_after`` is the server's Retry-After in seconds, if sent.
    """

    transient = True
    maybe_applied: bool = False
    retry_after: float | None = None
    default_hint = "Check the network and WANDB_BASE_URL; the action can be retried."

    def __init__(
        self,
        message: str,
        exc: BaseException | None = None,
        *,
        status: int | None = None,
        operation: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, status=status, operation=operation, hint=hint)
        self.exc = exc


class UpstreamUnavailable(CommError):
    """Connection refused/reset, timeout, 408 or 5xx: the server may answer later."""


class RateLimited(CommError):
    """429 Too Many Requests; ``retry_after`` is the server's delay in seconds, if sent."""

    default_hint = "The server is rate limiting; the mirror backs off and retries."

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class AuthError(UpstreamError):
    """401: the API key is missing or wrong."""

    default_hint = "Set WANDB_API_KEY or run `wandb login` for the server in WANDB_BASE_URL."


class NotFoundError(UpstreamError):
    """The entity, project, run, sweep or file does not exist."""

    default_hint = "Check the path (entity/project/run_id); run `mirror sync` to refresh."


class EditRejected(UpstreamError):
    """The server refused a write for good (400/403/404/409/410/413/422)."""

    default_hint = "See `mirror outbox --failed`; fix or discard the edit."


class ProtocolError(UpstreamError):
    """The server answered with something that is not the W&B protocol."""

    default_hint = "Check that WANDB_BASE_URL points at a W&B server (…/graphql)."


# --- inputs ------------------------------------------------------------------------------


class FilterError(MirrorError):
    """A runs filter or order string cannot be understood."""

    default_hint = (
        'Filters are MongoDB-style, e.g. {"state": "finished"} or '
        '{"config.lr": {"$gt": 0.01}}; order is "+field" or "-field".'
    )


class UnsafePathError(MirrorError):
    """A file name from the network would escape its folder or is otherwise unsafe."""

    default_hint = "The file was skipped; report the run's file name to its owner."

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"unsafe file name {name!r}: {reason}")
        self.name = name
        self.reason = reason


class ImportError_(MirrorError):
    """Importing one run from another system failed; other runs go on."""

    def __init__(self, message: str, *, source_run_id: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.source_run_id = source_run_id


__all__ = [
    "AuthError",
    "BlobVerifyError",
    "CommError",
    "ConfigError",
    "EditRejected",
    "FilterError",
    "ImportError_",
    "MirrorError",
    "NotAStoreError",
    "NotFoundError",
    "ProtocolError",
    "RateLimited",
    "SchemaOutOfDateError",
    "SchemaTooNewError",
    "StoreBusyError",
    "StoreError",
    "StoreFullError",
    "UnsafePathError",
    "UpstreamError",
    "UpstreamUnavailable",
]

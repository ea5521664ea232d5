"""Errors of the offline ``Api``, shaped so that scripts written for ``wandb.Api`` catch them.

wandb raises ``CommError`` from ``api.run``/``api.sweep``/``file.download`` (its
``normalize_exceptions`` wraps every failure), while the underlying cause is often a
``ValueError`` (``RunNotFoundError``, "File already exists"). Each error here is
therefore a :class:`~mirror.errors.CommError` (so ``except CommError`` works as with
wandb) *and* the built-in class wandb's cause had (so ``except ValueError`` works too),
with the mirror's usual message and hint.
"""

from __future__ import annotations

from mirror.errors import CommError, MirrorError, NotFoundError


class NotFoundInStore(CommError, NotFoundError, ValueError):
    """The run, sweep, project or file is not in the local store.

    Terminal, unlike a network ``CommError``: asking again gives the same answer until
    a sync brings the object in.
    """

    transient = False
    default_hint = NotFoundError.default_hint


class RunNotFoundError(NotFoundInStore):
    """``api.run(path)`` of a run the store does not hold (wandb's name)."""


class SweepNotFoundError(NotFoundInStore):
    """``api.sweep(path)`` of a sweep the store does not hold."""

    default_hint = "Check the path (entity/project/sweep_id); run `mirror sync` to refresh."


class ProjectNotFoundError(NotFoundInStore):
    """Iterating ``api.runs(path)`` of a project the store does not know."""

    default_hint = "Check the path (entity/project); run `mirror sync ENTITY/PROJECT` first."


class RunFileNotFoundError(NotFoundInStore, IndexError):
    """``run.file(name)`` of a name the run has no file of (wandb fails on ``[0]``)."""

    default_hint = "List the run's files with `mirror files RUN_PATH` or `run.files()`."


class FileNotCachedError(CommError):
    """The file is listed but its bytes are not in the blob cache (offline)."""

    transient = False

    def __init__(self, name: str, run_path: str) -> None:
        super().__init__(
            f"file {name!r} of run {run_path} is not in the local cache",
            hint=f"Run `mirror sync --files {run_path}` while online to fetch run files.",
        )
        self.name = name
        self.run_path = run_path


class DownloadTargetExistsError(CommError, ValueError):
    """``file.download()`` would overwrite a local file (wandb's message, verbatim)."""

    transient = False
    default_hint = "Pass replace=True to overwrite, or exist_ok=True to keep the local file."


class OfflineEditUnavailable(MirrorError, NotImplementedError):
    """An edit the mirror does not queue offline (deleting or stopping a run, changing
    its state, creating runs or projects through the ``Api``).

    Summary, config, tags, name, notes, group, job type, file uploads and file deletes are
    queued by the outbox; these others change what a run *is* upstream and are left to
    W&B itself, so the ``Api`` refuses them instead of silently dropping them.
    """

    default_hint = (
        "Do this with wandb.Api while online, then `mirror sync`. The mirror queues "
        "summary/config/tags/notes/name/group/job type edits and file uploads/deletes."
    )

    def __init__(self, action: str) -> None:
        super().__init__(f"{action} is not an edit the mirror can queue offline")
        self.action = action


class NotMirroredError(MirrorError, NotImplementedError):
    """The feature (artifacts, reports, launch...) is not part of the local mirror."""

    default_hint = "Use wandb.Api while online for this; the mirror holds runs, history, files."

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} are not part of the local mirror")
        self.what = what


__all__ = [
    "DownloadTargetExistsError",
    "FileNotCachedError",
    "NotFoundInStore",
    "NotMirroredError",
    "OfflineEditUnavailable",
    "ProjectNotFoundError",
    "RunFileNotFoundError",
    "RunNotFoundError",
    "SweepNotFoundError",
]

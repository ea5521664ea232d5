"""Making local edits: each one is an outbox op written in the caller's transaction.

Two kinds of callers:

* ``mirror.Api`` knows what the user saw (the run as loaded) and what they changed, so it
  builds per-key patches itself (:mod:`mirror.outbox.ops`) and calls :func:`enqueue_patch`;
* ``mirror serve`` in its default (local) mode receives W&B's whole documents from the
  official client (``upsertBucket`` sends the full summary, config and tags) and calls
  :func:`edit_documents`, which diffs them against the user's view *inside the same
  transaction*, so two clients editing at once never lose each other's keys.

A file upload stores the bytes in the blob cache first (verified, fsynced, renamed), then
records the blob row and the op in one transaction: a crash leaves either both or an
orphan blob file, never an op whose bytes are missing.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Mapping, Sequence
from typing import Any

from mirror.outbox import overlay
from mirror.outbox.ops import (
    META_FIELDS,
    doc_patch,
    meta_patch,
    put_record,
    tags_patch,
    unwrapped_config,
)
from mirror.records import FileRecord
from mirror.store import Store, blobs
from mirror.store import outbox as outbox_store
from mirror.store import runs as store_runs
from mirror.store.outbox import OpRecord

__all__ = [
    "UNSEEN",
    "edit_documents",
    "enqueue_file_delete",
    "enqueue_file_put",
    "enqueue_patch",
    "guess_mimetype",
    "pending_create",
    "queue_upload",
]

UNSEEN: Any = object()
"""Default of ``base_md5``: take the base from the user's view at the time of the edit."""


def enqueue_patch(
    session: Any,
    run_pk: int,
    kind: str,
    patch: tuple[dict[str, Any], dict[str, Any]] | None,
    *,
    now: float | None = None,
) -> int | None:
    """Enqueue one ``(payload, base)`` patch (None: nothing changed, nothing enqueued)."""
    if patch is None:
        return None
    payload, base = patch
    return outbox_store.enqueue(session, run_pk, kind, payload, base, now=now)


def edit_documents(
    session: Any,
    run_pk: int,
    *,
    summary: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    tags: Sequence[str] | None = None,
    meta: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> list[int]:
    """Turn whole new documents into per-key ops against the current view.

    ``config`` is W&B's wrapped form; ``meta`` maps RunRecord field names to new values.
    Only what differs from the view becomes an op; returns the new op ids.
    """
    view = overlay.view_run(session, run_pk)
    if view is None:
        raise KeyError(run_pk)
    ids: list[int | None] = []
    if summary is not None:
        ids.append(enqueue_patch(session, run_pk, "summary",
                                 doc_patch(view.summary or {}, summary), now=now))
    if config is not None:
        before = unwrapped_config(view.config)
        after = unwrapped_config(config)
        ids.append(enqueue_patch(session, run_pk, "config", doc_patch(before, after), now=now))
    if meta:
        before_meta = {name: getattr(view, name) for name in META_FIELDS}
        ids.append(enqueue_patch(session, run_pk, "meta", meta_patch(before_meta, meta),
                                 now=now))
    if tags is not None:
        ids.append(enqueue_patch(session, run_pk, "tags",
                                 tags_patch(list(view.tags or []), list(tags)), now=now))
    return [i for i in ids if i is not None]


def guess_mimetype(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def enqueue_file_put(
    session: Any,
    run_pk: int,
    name: str,
    info: blobs.BlobInfo,
    *,
    mimetype: str | None = None,
    base_md5: Any = UNSEEN,
    now: float | None = None,
) -> FileRecord:
    """Queue the upload of a blob already in the cache as run file ``name``.

    Records the blob row in the same transaction (the op's bytes are then guaranteed).
    Returns the file as the user's view now lists it.
    """
    if base_md5 is UNSEEN:
        seen = overlay.view_file(session, run_pk, name)
        base_md5 = seen.md5 if seen is not None else None
    blobs.record_blob(session, info)
    payload = {
        "name": name, "blob": info.hash, "md5": info.md5_b64, "size": info.size,
        "mimetype": mimetype or guess_mimetype(name),
    }
    op_id = outbox_store.enqueue(session, run_pk, "file_put", payload, {"md5": base_md5},
                                 now=now)
    op = outbox_store.get_op(session, op_id)
    assert op is not None
    return put_record(op)


def enqueue_file_delete(
    session: Any, run_pk: int, name: str, *, base_md5: Any = UNSEEN, now: float | None = None
) -> int | None:
    """Queue the deletion of run file ``name`` (None: the view has no such file)."""
    if base_md5 is UNSEEN:
        seen = overlay.view_file(session, run_pk, name)
        if seen is None:
            return None
        base_md5 = seen.md5
    return outbox_store.enqueue(session, run_pk, "file_delete", {"name": name},
                                {"md5": base_md5}, now=now)


def pending_create(session: Any, run_pk: int) -> OpRecord | None:
    """The run's ``create_run`` op that has not been acknowledged yet, if any.

    Such a run exists only locally: its row is the truth, edits apply to it directly and
    the upload carries them.
    """
    for op in outbox_store.list_ops(session, run_pk=run_pk, kinds=["create_run"]):
        if op.state != "done":
            return op
    return None


def queue_upload(
    store: Store,
    entity: str,
    project: str,
    run_id: str,
    name: str,
    fileobj: blobs.Readable,
    *,
    size: int,
    md5_b64: str | None = None,
) -> blobs.BlobInfo | None:
    """The drop-in server's upload (a PUT to a signed URL) as a queued ``file_put``.

    Returns None, having read nothing, when the run is not known here or exists only
    locally (its upload carries its files): the caller then stores the file directly.
    Otherwise the bytes go to the blob cache (verified against ``size``/``md5_b64``) and
    the op is queued with the blob row, in one transaction.
    """
    with store.session() as s:
        pk = store_runs.run_pk(s, entity, project, run_id)
        if pk is None or pending_create(s, pk) is not None:
            return None
    info = blobs.put_stream(store, fileobj, expected_size=size, expected_md5_b64=md5_b64,
                            record=False)
    with store.transaction() as s:
        enqueue_file_put(s, pk, name, info)
    return info

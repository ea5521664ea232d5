"""Settling: an acknowledged op leaves the read overlay once a pull shows upstream's truth.

An op is acknowledged (``done``) only when the server confirmed it; it stays overlaid on
reads until the local upstream row is known to reflect it, because until then the row is
older than the user's edit. Sync calls :func:`settle_run` after each run it pulled, in the
transaction that completes the run, and :func:`settle_runs` for the runs its listing showed
unchanged (the stored row then equals upstream's as listed). An op is settled when

* the pulled row shows every key's local value (file: the md5 / the absence), or
* the pull started after the op was acknowledged: whatever the row shows is then upstream's
  truth *after* our write (another user may have changed the key since, and that change
  must win locally too, or the local view would keep a stale value forever). For a run
  the listing showed unchanged this holds for its fields only: the listing carries every
  field but no file, and a file written within the second of the last pull leaves the
  listing as it was, so there a file op settles only when the stored files show it.

Settled ops are deleted; their conflicts (if any) keep the history. An op with a conflict
the user has not resolved yet is kept, so `mirror outbox resolve ID` can still name it.
"""

from __future__ import annotations

from typing import Any

from mirror.outbox.ops import (
    META_FIELDS,
    apply_tags,
    cell,
    meta_value,
    same_cell,
    unwrapped_config,
)
from mirror.records import FileRecord, RunRecord
from mirror.store import outbox as outbox_store
from mirror.store import runs as store_runs
from mirror.store.outbox import FILE_KINDS, OpRecord

__all__ = ["settle_run", "settle_runs", "shows"]


def shows(op: OpRecord, rec: RunRecord, files: dict[str, FileRecord]) -> bool:
    """Does the stored upstream state already hold everything ``op`` wrote?"""
    skip = set(op.payload.get("conflicted", []))
    keys = {k: v for k, v in op.payload.get("keys", {}).items() if k not in skip}
    if op.kind == "summary":
        return all(same_cell(cell(rec.summary, k), v) for k, v in keys.items())
    if op.kind == "config":
        doc = unwrapped_config(rec.config)
        return all(same_cell(cell(doc, k), v) for k, v in keys.items())
    if op.kind == "meta":
        return all(
            bool(v) and meta_value(getattr(rec, k)) == meta_value(v[0])
            for k, v in keys.items()
            if k in META_FIELDS
        )
    if op.kind == "tags":
        tags = list(rec.tags or [])
        return apply_tags(tags, op.payload) == tags
    name = op.payload.get("name")
    have = files.get(name) if isinstance(name, str) else None
    if op.kind == "file_put":
        return have is not None and have.md5 == op.payload.get("md5")
    if op.kind == "file_delete":
        return have is None
    return True  # create_run: the pulled row is the uploaded run


def settle_run(
    session: Any, run_pk: int, *, pulled_after: float, files_pulled: bool = True
) -> int:
    """Delete the run's acknowledged ops that the freshly pulled rows now reflect.

    ``pulled_after`` is the (local) time the pull began reading upstream;
    ``files_pulled`` says whether the pull re-listed the run's files too (if not, file ops
    settle only when the stored files already show them). Returns how many
    ops were settled. A settled upload whose file row has no cached bytes gets ours: they
    are the same content (same md5), so an offline download keeps working.
    """
    done = outbox_store.list_ops(session, states=["done"], run_pk=run_pk)
    if not done:
        return 0
    rec = store_runs.get_run_by_pk(session, run_pk)
    if rec is None:
        return 0
    files = {f.name: f for f in store_runs.list_files(session, run_pk)}
    parked = {c.op_id for c in outbox_store.list_conflicts(session, run_pk=run_pk)}
    settled = []
    for op in done:
        if op.id in parked:
            continue  # kept until the user resolves its conflict (`mirror outbox resolve`)
        acked_at = op.updated_at if op.updated_at is not None else op.created_at
        fresh = files_pulled or op.kind not in FILE_KINDS
        if (fresh and acked_at < pulled_after) or shows(op, rec, files):
            settled.append(op.id)
            _keep_cached_bytes(session, run_pk, op, files)
    return outbox_store.delete_ops(session, settled)


def _keep_cached_bytes(
    session: Any, run_pk: int, op: OpRecord, files: dict[str, FileRecord]
) -> None:
    if op.kind != "file_put":
        return
    row = files.get(str(op.payload.get("name")))
    if row is not None and row.blob_hash is None and row.md5 == op.payload.get("md5"):
        row.blob_hash = op.payload.get("blob")
        store_runs.save_file(session, run_pk, row)


def settle_runs(session: Any, run_pks: list[int], *, pulled_after: float) -> int:
    """:func:`settle_run` for runs a listing showed unchanged (their files not re-listed),
    each of ``run_pks`` that has acknowledged ops; one query finds them."""
    if not run_pks:
        return 0
    with_done = outbox_store.ops_for_runs(session, run_pks, states=["done"])
    return sum(settle_run(session, pk, pulled_after=pulled_after, files_pulled=False)
               for pk in with_done)

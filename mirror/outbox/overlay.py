"""Read-your-writes: upstream rows as stored, with the unsettled ops laid over them.

Rows copied from upstream are written only by sync; what the user changed lives in the
outbox. Every read that a user (``mirror.Api``, ``mirror serve``) sees goes through here,
so an edit shows at once, before and after it is pushed, and until a later pull shows the
value upstream (then the op is settled and the plain row is the truth again). Runs without
ops cost one indexed lookup per page of runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mirror.outbox.ops import overlay_files, overlay_run
from mirror.records import FileRecord, RunRecord
from mirror.store import outbox as outbox_store
from mirror.store import reads
from mirror.store import runs as store_runs
from mirror.store.outbox import FIELD_KINDS, FILE_KINDS, OpRecord

__all__ = [
    "file_ops",
    "overlay_records",
    "overlay_stored",
    "view_file",
    "view_files",
    "view_run",
]


def overlay_stored(session: Any, stored: Sequence[reads.StoredRun]) -> None:
    """Lay pending field edits over runs read with lazy documents (in place).

    Only runs that have ops get their documents decoded.
    """
    pks = [s.record.pk for s in stored if s.record.pk is not None]
    if not pks:
        return
    ops = outbox_store.ops_for_runs(session, pks, kinds=FIELD_KINDS)
    for s in stored:
        mine = ops.get(s.record.pk or -1)
        if mine:
            overlay_run(s.complete(), mine)


def overlay_records(session: Any, records: Sequence[RunRecord]) -> None:
    """Lay pending field edits over fully read run records (in place)."""
    pks = [r.pk for r in records if r.pk is not None]
    if not pks:
        return
    ops = outbox_store.ops_for_runs(session, pks, kinds=FIELD_KINDS)
    for rec in records:
        mine = ops.get(rec.pk or -1)
        if mine:
            overlay_run(rec, mine)


def view_run(session: Any, run_pk: int) -> RunRecord | None:
    """The run as the user sees it (upstream row + unsettled field ops)."""
    rec = store_runs.get_run_by_pk(session, run_pk)
    if rec is not None:
        overlay_records(session, [rec])
    return rec


def file_ops(session: Any, run_pk: int) -> list[OpRecord]:
    """The run's unsettled file ops (id order); empty for almost every run."""
    return outbox_store.ops_for_runs(session, [run_pk], kinds=FILE_KINDS).get(run_pk, [])


def view_files(
    session: Any, run_pk: int, ops: Sequence[OpRecord] | None = None
) -> list[FileRecord]:
    """Every live file of the run as the user sees it, sorted by name."""
    stored = store_runs.list_files(session, run_pk)
    pending = file_ops(session, run_pk) if ops is None else ops
    return overlay_files(stored, pending) if pending else stored


def view_file(session: Any, run_pk: int, name: str) -> FileRecord | None:
    """One file of the run as the user sees it (None: no such file in the view)."""
    stored = store_runs.get_file(session, run_pk, name)
    live = [stored] if stored is not None and not stored.tombstoned else []
    pending = [op for op in file_ops(session, run_pk) if op.payload.get("name") == name]
    found = overlay_files(live, pending) if pending else live
    return found[0] if found else None

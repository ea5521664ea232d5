"""Read-your-writes: upstream rows as stored, with the unsettled ops laid over them.

Rows copied from upstream are written only by sync; what the user changed lives in the
outbox. Every read that a user (``mirror.Api``, ``mirror serve``) sees goes through here,
so an edit shows at once, before and after it is pushed, and until a later pull shows the
value upstream (then the op is settled and the plain row is the truth again). Runs without
ops cost one indexed lookup per page of runs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from mirror.outbox.ops import overlay_files, overlay_run
from mirror.records import FileRecord, RunRecord
from mirror.store import outbox as outbox_store
from mirror.store import reads
from mirror.store import runs as store_runs
from mirror.store.outbox import FIELD_KINDS, FILE_KINDS, OpRecord

__all__ = [
    "file_listing",
    "file_ops",
    "like_regex",
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


def file_listing(
    session: Any,
    run_pk: int,
    pending: Sequence[OpRecord],
    *,
    names: Sequence[str] | None = None,
    pattern: str | None = None,
) -> list[FileRecord]:
    """The run's files matching ``names`` (exact) or ``pattern`` (SQL LIKE), with pending
    file edits laid over them, sorted by name (for keyset paging by the caller)."""
    stored = reads.file_page(session, run_pk, names=list(names or []) or None, pattern=pattern)

    def wanted(name: str) -> bool:
        if names:
            return name in names
        return pattern is None or like_regex(pattern).fullmatch(name) is not None

    mine = [op for op in pending if wanted(str(op.payload.get("name")))]
    return overlay_files(stored, mine)


@lru_cache(maxsize=64)
def like_regex(pattern: str) -> re.Pattern[str]:
    """A SQL ``LIKE`` pattern as a regex (``%``, ``_``, backslash escapes; ASCII case
    folded, as SQLite's and MySQL's default LIKE do), for files only the overlay lists."""
    out: list[str] = []
    chars = iter(pattern)
    for ch in chars:
        if ch == "\\":
            out.append(re.escape(next(chars, "\\")))
        elif ch == "%":
            out.append(".*")
        elif ch == "_":
            out.append(".")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL | re.IGNORECASE | re.ASCII)

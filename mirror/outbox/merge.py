"""The 3-way merge, per key, against upstream's fresh state. Pure: no I/O.

For every key an op changes there are three values: the op's *base* (what upstream had
when the edit was made), its *local* value, and the *remote* value read right before the
write. Then (offline-sync-anchors 7.4):

* remote == local: already done (the write landed before, or someone made the same edit);
* remote == base: nobody else touched the key: apply the local value (so is a remote value
  that an earlier, coalesced op of ours already sent: ``base["also"]``);
* otherwise the key changed upstream too: a conflict, recorded with both values and
  parked; the op's other keys still go through, and keys the op does not name keep
  whatever upstream has (the full document sent is built from the fresh remote one).

Tags are set deltas applied to the fresh tags (never a conflict). Files compare md5s:
a put whose md5 upstream already has is done; a delete of a file upstream no longer has
is done.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mirror.outbox.ops import (
    META_FIELDS,
    apply_cells,
    apply_config_cells,
    apply_tags,
    cell,
    meta_value,
    same_cell,
    unwrapped_config,
)
from mirror.records import FileRecord, RunRecord
from mirror.store.outbox import OpRecord


@dataclass(frozen=True)
class KeyConflict:
    """One key of one op that changed upstream since the op's base."""

    op_id: int
    kind: str
    key: str
    base: Any
    local: Any
    remote: Any


@dataclass
class FieldsMerge:
    """What to send for one run's field ops, and what each op's keys came to."""

    fields: dict[str, Any] = field(default_factory=dict)
    """``UpsertBucketInput`` fields to send (without ``id``); empty: nothing to write."""
    written: dict[int, list[str]] = field(default_factory=dict)
    already: dict[int, list[str]] = field(default_factory=dict)
    conflicts: list[KeyConflict] = field(default_factory=list)

    def conflicted(self, op_id: int) -> list[str]:
        return [c.key for c in self.conflicts if c.op_id == op_id]


def _decide(
    remote: list[Any], local: list[Any], base: list[Any], also: Sequence[list[Any]] = ()
) -> str:
    """``also``: values an earlier, coalesced op already sent (it may have landed)."""
    if same_cell(remote, local):
        return "already"
    if same_cell(remote, base) or any(same_cell(remote, cell) for cell in also):
        return "apply"
    return "conflict"


def merge_fields(remote: RunRecord, ops: Sequence[OpRecord]) -> FieldsMerge:
    """Merge a run's coalesced field ops (summary, config, meta, tags) into one input."""
    out = FieldsMerge()
    for op in ops:
        if op.kind == "tags":
            tags = apply_tags(remote.tags or [], op.payload)
            if tags != list(remote.tags or []):
                out.fields["tags"] = tags
                out.written[op.id] = ["tags"]
            else:
                out.already[op.id] = ["tags"]
            continue
        if op.kind not in ("summary", "config", "meta"):
            continue
        bases = op.base.get("keys", {})
        alternatives = op.base.get("also", {})
        if op.kind == "config":
            remote_doc: dict[str, Any] = unwrapped_config(remote.config)
        elif op.kind == "summary":
            remote_doc = dict(remote.summary or {})
        else:
            remote_doc = {name: meta_value(getattr(remote, name)) for name in META_FIELDS}
        apply: dict[str, list[Any]] = {}
        for key, local in op.payload.get("keys", {}).items():
            base = bases.get(key, [])
            also = list(alternatives.get(key, []))
            if op.kind == "meta":
                local = [meta_value(local[0])] if local else []
                base = [meta_value(base[0])] if base else []
                also = [[meta_value(c[0])] if c else [] for c in also]
            remote_cell = cell(remote_doc, key)
            verdict = _decide(remote_cell, local, base, also)
            if verdict == "apply":
                apply[key] = local
                out.written.setdefault(op.id, []).append(key)
            elif verdict == "already":
                out.already.setdefault(op.id, []).append(key)
            else:
                out.conflicts.append(KeyConflict(op.id, op.kind, key, base, local, remote_cell))
        if not apply:
            continue
        if op.kind == "summary":
            out.fields["summaryMetrics"] = apply_cells(remote.summary, apply)
        elif op.kind == "config":
            out.fields["config"] = apply_config_cells(remote.config, apply)
        else:
            for name, value in apply.items():
                # upsertBucket reads null as "keep": clearing a field sends "".
                out.fields[META_FIELDS[name]] = meta_value(value[0] if value else None)
    return out


def merge_file(op: OpRecord, remote: FileRecord | None) -> str:
    """``"upload"``, ``"delete"``, ``"already"`` or ``"conflict"`` for one file op.

    ``remote`` is upstream's file of that name as just listed (None: no such file). The
    base is the md5 the user's view had (None: no file), so an upload over a file someone
    else changed meanwhile, or a delete of a file re-uploaded meanwhile, is a conflict,
    never a silent overwrite.
    """
    remote_md5 = remote.md5 if remote is not None else None
    bases = [op.base.get("md5"), *op.base.get("also", [])]
    if op.kind == "file_put":
        if remote is not None and remote_md5 == op.payload.get("md5"):
            return "already"
        if remote_md5 in bases:
            return "upload"
        return "conflict"
    if remote is None:
        return "already"
    if remote_md5 in bases:
        return "delete"
    return "conflict"
